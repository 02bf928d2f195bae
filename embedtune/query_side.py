"""Query-side adaptation: tune how queries are embedded; documents, and every vector already
stored for them, stay exactly as they are (``train.side: query``).

Two kinds (``train.query_side``), both saved as ordinary sentence-transformers folders that any
tool loads, with ``encode_query`` going through the tuned part and ``encode_document`` (and plain
``encode``) returning the base model's vectors bit for bit:

- ``adapter``: the base model's modules, then a ``Router`` whose ``query`` route is a ``Dense``
  layer (a full linear map initialised to the identity) + ``Normalize`` and whose ``document``
  route is empty. It trains on fixed vectors only: the corpus and the training queries are encoded
  once by the base model (through the embedding cache), a step is a linear map and a softmax.
  Seconds on a CPU; adds 0.6 MB to the encoder a user already has.
- ``encoder``: a ``Router`` with a trainable copy of the whole encoder on the ``query`` route and
  the base encoder on the ``document`` route. Queries run through the encoder at each step
  (short texts: minutes on a CPU); documents still only as the base model's cached vectors.

``query_side.json`` in the folder records the document encoder's fingerprint
(:data:`embedtune.models.QUERY_SIDE_FILE`): indexes and cached embeddings of that encoder serve
the new model without re-encoding a document, and an index of another encoder is refused.

The objective is the contrastive one of ``loss.name: mnrl`` with the whole corpus as the batch:
each relevant document against every document not judged relevant to the query (the mined hard
negatives among them); other relevant documents of the query are masked. With
``train.hybrid_teacher`` the KL divergence between mining's hybrid teacher (BM25 fused with the base
model's cosine) and the model, both as a softmax over the whole corpus, is added: the labels name
a few relevant documents, the teacher grades every other one. The epoch that scores best on the
dev signal is kept. Written by hand, not with sentence-transformers' trainer: the
trainer encodes every document column at each step, which is what this mode exists to avoid.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, InputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .models import LoadedModel

log = logging.getLogger("embedtune")

ROUTER_NAME = "Router"
QUERY_ROUTE = "query"
DOCUMENT_ROUTE = "document"


def _record(base: "LoadedModel", kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "document_encoder": {"name": str(base.path) if base.path else None, "sha256": base.fingerprint},
        "note": "Query-side model: documents are the document encoder's vectors unchanged; encode queries "
                "with encode_query and documents with encode_document.",
    }


def _with_identity(model: "SentenceTransformer", base: "LoadedModel", kind: str) -> "LoadedModel":
    """The new model with the base's identity and a query-side record naming the base as its
    document encoder."""
    from .models import LoadedModel

    model.max_seq_length = base.max_seq_length
    return LoadedModel(st=model, config=base.config, path=base.path, fingerprint=base.fingerprint, query_side=_record(base, kind))


def add_query_adapter(base: "LoadedModel", weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> "LoadedModel":
    """``base`` + a query-only linear adapter (identity when ``weight``/``bias`` are None)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    dim = base.dim
    dense = Dense(dim, dim, bias=True, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.eye(dim) if weight is None else torch.as_tensor(weight))
        dense.linear.bias.copy_(torch.zeros(dim) if bias is None else torch.as_tensor(bias))
    router = Router({QUERY_ROUTE: [dense, Normalize()], DOCUMENT_ROUTE: []}, default_route=DOCUMENT_ROUTE)
    model = SentenceTransformer(modules=[*copy.deepcopy(list(base.st.children())), router], device=base.device)
    return _with_identity(model, base, "adapter")


def add_query_encoder(base: "LoadedModel", query_encoder: "SentenceTransformer | None" = None) -> "LoadedModel":
    """A Router model: ``query_encoder`` (default: a copy of ``base``) for queries, ``base`` for documents."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    query = copy.deepcopy(list((query_encoder or base.st).children()))
    router = Router({QUERY_ROUTE: query, DOCUMENT_ROUTE: copy.deepcopy(list(base.st.children()))}, default_route=DOCUMENT_ROUTE)
    return _with_identity(SentenceTransformer(modules=[router], device=base.device), base, "encoder")


def _router(model: "SentenceTransformer") -> Any:
    return next((m for m in model.children() if type(m).__name__ == ROUTER_NAME and QUERY_ROUTE in getattr(m, "sub_modules", {})), None)


def query_adapter(model: "LoadedModel") -> Any:
    """The adapter's ``Dense`` module of an adapter-kind query-side model, or None."""
    router = _router(model.st)
    if router is None or (model.query_side or {}).get("kind") != "adapter":
        return None
    return router.sub_modules[QUERY_ROUTE][0]


def interpolate_query_side(model: "LoadedModel", alpha: float) -> "LoadedModel":
    """A copy whose query side is ``alpha`` of the way from the base model (0) to the trained one
    (1): weight merging (WiSE-FT) for a query-side model. An adapter moves from the identity; an
    encoder copy from the document route's weights, which are the base model's."""
    import torch

    out = dataclasses.replace(model, st=copy.deepcopy(model.st))
    router = _router(out.st)
    with torch.no_grad():
        if out.query_side.get("kind") == "adapter":
            dense = router.sub_modules[QUERY_ROUTE][0]
            eye = torch.eye(dense.linear.weight.shape[0], dtype=dense.linear.weight.dtype)
            dense.linear.weight.copy_(eye + alpha * (dense.linear.weight - eye))
            dense.linear.bias.mul_(alpha)
        else:
            base = dict(router.sub_modules[DOCUMENT_ROUTE].named_parameters())
            for name, p in router.sub_modules[QUERY_ROUTE].named_parameters():
                p.copy_(base[name] + alpha * (p - base[name]))
    return out


# --------------------------------------------------------------------------- training


def _dev_ndcg(queries: Any, doc_vectors: Any, doc_ids: list[str], dev_ids: list[str], qrels: dict[str, dict[str, int]]) -> float:
    """Mean dev nDCG@10 of exact search over the whole corpus (the project's metric code)."""
    from .evaluation import compute_metrics

    top = (queries @ doc_vectors.T).topk(min(10, doc_vectors.shape[0]), dim=1)
    run = {q: {doc_ids[j]: float(v) for v, j in zip(vals, idx)}
           for q, vals, idx in zip(dev_ids, top.values.tolist(), top.indices.tolist())}
    scores = compute_metrics(qrels, run, ignore_identical_ids=False, only=("ndcg@10",))["ndcg@10"]
    return float(np.mean(list(scores.values())))


class _Adapter:
    """The adapter kind: a linear map on the base model's fixed query vectors."""

    def __init__(self, base: "LoadedModel", queries: Any) -> None:
        import torch

        self.base, self.queries = base, queries
        dim = queries.shape[1]
        self.weight = torch.nn.Parameter(torch.eye(dim))
        self.bias = torch.nn.Parameter(torch.zeros(dim))

    def parameters(self) -> list:
        return [self.weight, self.bias]

    def embed(self, rows: list[int], texts: list[str]) -> Any:
        import torch

        return torch.nn.functional.normalize(self.queries[rows] @ self.weight.T + self.bias, dim=-1)

    def embed_dev(self, vectors: Any, texts: list[str]) -> Any:
        import torch

        return torch.nn.functional.normalize(vectors @ self.weight.T + self.bias, dim=-1)

    def snapshot(self) -> Any:
        return (self.weight.detach().clone(), self.bias.detach().clone())

    def build(self, state: Any) -> "LoadedModel":
        return add_query_adapter(self.base, state[0].numpy(), state[1].numpy())


class _Encoder:
    """The encoder kind: a trainable copy of the base encoder runs the queries."""

    def __init__(self, base: "LoadedModel", precision: str, prompt: str) -> None:
        self.base, self.precision, self.prompt = base, precision, prompt
        self.model = copy.deepcopy(base.st)  # the trainable copy: a bare sentence-transformers model

    def parameters(self) -> list:
        return list(self.model.parameters())

    def embed(self, rows: list[int], texts: list[str]) -> Any:
        import torch

        self.model.train()
        features = self.model.preprocess([self.prompt + t for t in texts])
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(device_type=self.model.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self.model(features)["sentence_embedding"]
        return torch.nn.functional.normalize(out.float(), dim=-1)

    def embed_dev(self, vectors: Any, texts: list[str]) -> Any:
        import torch

        from .encoding import encode_texts

        self.model.eval()
        return torch.from_numpy(encode_texts(self.model, texts, prompt=self.prompt, batch_size=64, precision=self.precision,
                                             show_progress=False))

    def snapshot(self) -> Any:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def build(self, state: Any) -> "LoadedModel":
        self.model.load_state_dict(state)
        self.model.eval()
        return add_query_encoder(self.base, self.model)


class _CorpusTeacher:
    """``train.hybrid_teacher``: the hybrid teacher's softmax over the whole corpus for each training
    query, the target of a KL term. Rows are computed per batch (a query's BM25 row and the base
    model's cosines), not stored: queries x documents floats would not fit for a large corpus."""

    def __init__(self, cfg: Any, queries: np.ndarray, qtexts: list[str], doc_texts: list[str], docs: Any) -> None:
        """``queries``: the base model's vectors of ``qtexts``; ``docs``: its vectors of ``doc_texts``."""
        from .lexical import bm25_index

        self.cfg, self.queries, self.texts, self.docs = cfg, queries, qtexts, docs
        self.bm25 = bm25_index(doc_texts)

    def kl(self, rows: list[int], logits: Any) -> Any:
        """KL(teacher || model) per query, averaged; ``logits`` are the model's scaled cosines."""
        import torch

        from .mining.teachers import hybrid_teacher_rows

        t = self.cfg.hybrid_teacher
        cos = self.queries[rows] @ self.docs.numpy().T
        target = hybrid_teacher_rows(cos, [self.texts[i] for i in rows], self.bm25, t.bm25_weight, t.stats_depth)
        log_target = torch.log_softmax(self.cfg.loss.scale * torch.from_numpy(target), dim=1)
        return torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1), log_target, log_target=True, reduction="batchmean")


def train_query_side(cfg: Any, corpus: dict[str, str], queries: dict[str, str], relevant: dict[str, set[str]],
                     dev_queries: dict[str, str] | None, dev_relevant: dict[str, set[str]] | None, model_dir: Path, *,
                     precision: str, progress: bool = True) -> dict[str, Any]:
    """Train the query side (``cfg.query_side``) and save the model into ``model_dir``.

    ``cfg`` is a :class:`embedtune.training.TrainConfig` (training calls this; this module does
    not import it back). ``queries`` / ``relevant``: the training queries and the ids of their
    relevant documents, all in ``corpus``; ``dev_*`` the same for dev, or None. A query with no
    relevant document (an unlabeled query) is taught by ``cfg.hybrid_teacher`` alone, which it then
    needs. Returns the best dev score, the base model's, the curve, the steps and the seconds.
    """
    import torch

    from .encoding import encode_corpus, encode_queries
    from .io import save_model_atomically
    from .models import load_model

    unlabeled = sum(1 for q in queries if not relevant.get(q))
    if unlabeled and not cfg.hybrid_teacher:  # before the model loads and the corpus is encoded
        raise ConfigError(f"{unlabeled} training queries have no relevant document: an unlabeled query "
                          "needs train.hybrid_teacher to learn from", field="train.hybrid_teacher")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    base = load_model(cfg.model)
    doc_ids = list(corpus)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    doc_texts = [corpus[d] for d in doc_ids]
    docs = torch.from_numpy(np.array(encode_corpus(base, cfg.model, doc_ids, doc_texts, show_progress=progress)))
    qids = sorted(queries)
    qtexts = [queries[q] for q in qids]
    positives = [sorted(doc_row[d] for d in relevant.get(q, ())) for q in qids]
    labeled = torch.tensor([bool(p) for p in positives])
    base_queries = None  # the base model's query vectors: the adapter's input and the teacher's cosines
    if cfg.query_side == "adapter" or cfg.hybrid_teacher:
        base_queries = np.array(encode_queries(base, cfg.model, qids, qtexts))
    if cfg.query_side == "adapter":
        side: Any = _Adapter(base, torch.from_numpy(base_queries))
    else:
        side = _Encoder(base, precision, cfg.model.query_prompt)

    dev_vectors = dev_texts = dev_ids = dev_qrels = None
    if dev_queries is not None:
        if any(d not in doc_row for r in dev_relevant.values() for d in r):
            raise InputError("dev queries judge documents outside the mined corpus: mine against the same corpus", field="dev.source")
        dev_ids = sorted(dev_relevant)
        dev_texts = [dev_queries[q] for q in dev_ids]
        dev_qrels = {q: {d: 1 for d in dev_relevant[q]} for q in dev_ids}
        # against the whole corpus, not the dev sample: its vectors are already here
        dev_vectors = torch.from_numpy(np.array(encode_queries(base, cfg.model, dev_ids, dev_texts)))

    teacher = _CorpusTeacher(cfg, base_queries, qtexts, doc_texts, docs) if cfg.hybrid_teacher else None
    optimizer = torch.optim.AdamW(side.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    epochs = max(1, round(cfg.epochs))
    batches = [list(range(i, min(i + cfg.batch_size, len(qids)))) for i in range(0, len(qids), cfg.batch_size)]
    total = cfg.max_steps or epochs * len(batches)
    warmup = cfg.warmup_ratio * total
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    base_dev = _dev_ndcg(dev_vectors, docs, doc_ids, dev_ids, dev_qrels) if dev_queries is not None else None
    best: tuple[float | None, int, Any] = (base_dev, 0, side.snapshot())
    curve: dict[str, list] = {"loss": [], "dev": [] if base_dev is None else [{"step": 0, "ndcg@10": base_dev}]}
    step, patience_left = 0, cfg.dev.early_stopping_patience
    order = list(range(len(qids)))
    for epoch in range(epochs):
        rng.shuffle(order)
        losses = []
        for rows in batches:
            idx = [order[i] for i in rows]
            logits = cfg.loss.scale * side.embed(idx, [qtexts[i] for i in idx]) @ docs.T
            relevant = torch.zeros_like(logits, dtype=torch.bool)
            for r, i in enumerate(idx):
                relevant[r, positives[i]] = True
            # each relevant document against every non-relevant one: -log p(pos | pos + negatives),
            # averaged over the labeled queries of the batch
            negatives = torch.logsumexp(logits.masked_fill(relevant, float("-inf")), dim=1, keepdim=True)
            per_doc = torch.nn.functional.softplus(negatives - logits)
            with_labels = labeled[idx]
            loss = ((per_doc * relevant).sum(1)[with_labels] / relevant.sum(1)[with_labels]).mean() if with_labels.any() \
                else logits.new_zeros(())
            if teacher is not None:
                loss = loss + cfg.hybrid_teacher.weight * teacher.kl(idx, logits)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(side.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            if step >= total:
                break
        curve["loss"].append({"step": step, "loss": float(np.mean(losses)), "learning_rate": scheduler.get_last_lr()[0]})
        if dev_queries is None:
            best = (None, step, side.snapshot())
        else:
            with torch.no_grad():
                score = _dev_ndcg(side.embed_dev(dev_vectors, dev_texts), docs, doc_ids, dev_ids, dev_qrels)
            curve["dev"].append({"step": step, "ndcg@10": score})
            log.info("query %s: epoch %d, loss %.4f, dev nDCG@10 %.4f", cfg.query_side, epoch + 1, np.mean(losses), score)
            if score > best[0]:
                best = (score, step, side.snapshot())
                patience_left = cfg.dev.early_stopping_patience
            elif patience_left is not None:
                patience_left -= 1
                if patience_left <= 0:
                    log.info("query %s: early stop after epoch %d (no dev gain for %d epochs)", cfg.query_side, epoch + 1,
                             cfg.dev.early_stopping_patience)
                    break
        if step >= total:
            break
    curve["steps"] = step
    save_model_atomically(side.build(best[2]), model_dir)
    log.info("query %s: %d queries against %d documents, best dev at step %d", cfg.query_side, len(qids), len(doc_ids), best[1])
    return {"best_dev": best[0], "base_dev": base_dev, "best_step": best[1], "curve": curve, "steps": step,
            "seconds": time.perf_counter() - t0}
