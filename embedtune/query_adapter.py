"""Query-side adaptation: tune how queries are embedded; documents, and every vector already
stored for them, stay exactly as they are (``train.side: query``).

The trained model is an ordinary sentence-transformers folder: the base model's modules, then a
``Router`` whose ``query`` route is a ``Dense`` layer (the adapter, a full linear map initialised
to the identity) + ``Normalize``, and whose ``document`` route is empty. ``encode_document`` (and
plain ``encode``) therefore return the base model's vectors bit for bit, ``encode_query`` goes
through the adapter, and any tool that loads sentence-transformers folders loads it.
``query_side.json`` in the folder records the document encoder's fingerprint
(:data:`embedtune.models.QUERY_SIDE_FILE`): indexes and cached embeddings of that encoder serve
the new model without re-encoding a document, and an index of another encoder is refused.

Training sees fixed vectors only: the corpus and the training queries are encoded once by the
base model (through the embedding cache, so usually not at all), and each step is a linear map
and a softmax over the whole corpus -- every document not judged relevant is a negative, the
mined hard negatives among them (the contrastive objective of ``loss.name: mnrl`` with the whole
corpus as its batch; other relevant documents of a query are masked). Written by hand, not with
sentence-transformers' trainer, because the trainer runs the encoder forward at every step, which
is what this mode exists to avoid. The epoch that scores best on the dev signal is kept.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .training import DevSplit, MinedData, RoundResult, TrainConfig

log = logging.getLogger("embedtune")

ROUTER_NAME = "Router"
QUERY_ROUTE = "query"
DOCUMENT_ROUTE = "document"


def add_query_adapter(base: "SentenceTransformer", weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> "SentenceTransformer":
    """``base`` + a query-only linear adapter (identity when ``weight``/``bias`` are None)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    dim = base.get_embedding_dimension()
    dense = Dense(dim, dim, bias=True, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.eye(dim) if weight is None else torch.as_tensor(weight))
        dense.linear.bias.copy_(torch.zeros(dim) if bias is None else torch.as_tensor(bias))
    router = Router({QUERY_ROUTE: [dense, Normalize()], DOCUMENT_ROUTE: []}, default_route=DOCUMENT_ROUTE)
    model = SentenceTransformer(modules=[*copy.deepcopy(list(base.children())), router], device=str(base.device))
    model.max_seq_length = base.max_seq_length
    model.embedtune_path = getattr(base, "embedtune_path", None)
    model.embedtune_fingerprint = base.embedtune_fingerprint
    model.embedtune_query_side = {
        "kind": "adapter",
        "document_encoder": {"name": getattr(base, "embedtune_path", None), "sha256": base.embedtune_fingerprint},
        "note": "Query-side model: documents are the document encoder's vectors unchanged; encode queries "
                "with encode_query (the adapter) and documents with encode_document.",
    }
    return model


def query_adapter(model: "SentenceTransformer") -> Any:
    """The adapter's ``Dense`` module of a query-side model, or None."""
    for module in model.children():
        if type(module).__name__ == ROUTER_NAME and QUERY_ROUTE in getattr(module, "sub_modules", {}):
            route = module.sub_modules[QUERY_ROUTE]
            return route[0] if len(route) else None
    return None


def interpolate_adapter(model: "SentenceTransformer", alpha: float) -> "SentenceTransformer":
    """A copy whose adapter is ``alpha`` of the way from the identity (the base model) to the
    trained one: weight merging (WiSE-FT) for a query-side model."""
    import torch

    out = copy.deepcopy(model)
    dense = query_adapter(out)
    with torch.no_grad():
        eye = torch.eye(dense.linear.weight.shape[0], dtype=dense.linear.weight.dtype)
        dense.linear.weight.copy_(eye + alpha * (dense.linear.weight - eye))
        dense.linear.bias.mul_(alpha)
    return out


# --------------------------------------------------------------------------- training


def _training_queries(data: "MinedData", exclude: set[str], doc_row: dict[str, int]) -> tuple[list[str], list[str], list[list[int]]]:
    """Query ids, texts and the corpus rows of every document judged relevant to each (rows
    mining kept + graded qrels), dev queries left out."""
    c = data.columns
    text: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for qid, query, pid in zip(c["query_id"], c["query"], c["positive_id"]):
        if qid in exclude:
            continue
        text.setdefault(qid, query)
        relevant.setdefault(qid, set()).add(pid)
    for qid, docs in (data.qrels or {}).items():
        if qid in relevant:
            relevant[qid] |= {d for d, s in docs.items() if s > 0}
    missing = sorted({d for r in relevant.values() for d in r} - set(doc_row))
    if missing:
        raise InputError(f"{len(missing)} positive document id(s) are not in the mined corpus (e.g. '{missing[0]}')",
                         file=data.source, field="positive_id")
    qids = sorted(relevant)
    return qids, [text[q] for q in qids], [sorted(doc_row[d] for d in relevant[q]) for q in qids]


def _dev_ndcg(queries: Any, doc_vectors: Any, relevant_rows: list[set[int]]) -> float:
    """Mean nDCG@10 (binary gains) of exact search: the dev signal, computed on tensors."""
    k = min(10, doc_vectors.shape[0])
    top = (queries @ doc_vectors.T).topk(k, dim=1).indices.tolist()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    scores = []
    for ranked, rel in zip(top, relevant_rows):
        dcg = sum(discounts[i] for i, d in enumerate(ranked) if d in rel)
        ideal = discounts[: min(len(rel), k)].sum()
        scores.append(dcg / ideal if ideal else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def train_query_adapter(data: "MinedData", cfg: "TrainConfig", dev: "DevSplit | None", model_dir: Path, *,
                        progress: bool = True) -> "RoundResult":
    """Train the adapter on ``data`` and save the query-side model into ``model_dir``."""
    import torch

    from .encoding import encode_corpus, encode_queries
    from .io import save_model_atomically
    from .models import load_model
    from .training import RoundResult, _mined_corpus

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    base = load_model(cfg.model)
    corpus, corpus_desc = _mined_corpus(data)
    doc_ids = list(corpus)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    docs = torch.from_numpy(np.array(encode_corpus(base, cfg.model, doc_ids, [corpus[d] for d in doc_ids], show_progress=progress)))
    qids, qtexts, positives = _training_queries(data, dev.exclude_query_ids if dev else set(), doc_row)
    queries = torch.from_numpy(np.array(encode_queries(base, cfg.model, qids, qtexts)))

    dev_queries = dev_relevant = None
    if dev is not None:
        if any(d not in doc_row for r in dev.relevant.values() for d in r):
            raise InputError("dev queries judge documents outside the mined corpus: mine against the same corpus", field="dev.source")
        dev_ids = sorted(dev.relevant)
        # against the whole corpus, not the dev sample: its vectors are already here
        dev_queries = torch.from_numpy(np.array(encode_queries(base, cfg.model, dev_ids, [dev.queries[q] for q in dev_ids])))
        dev_relevant = [{doc_row[d] for d in dev.relevant[q]} for q in dev_ids]

    dim = docs.shape[1]
    weight = torch.nn.Parameter(torch.eye(dim))
    bias = torch.nn.Parameter(torch.zeros(dim))
    optimizer = torch.optim.AdamW([weight, bias], lr=cfg.learning_rate, weight_decay=0.0)

    def embed(q: Any) -> Any:
        return torch.nn.functional.normalize(q @ weight.T + bias, dim=-1)

    epochs = max(1, round(cfg.epochs))
    batches = [list(range(i, min(i + cfg.batch_size, len(qids)))) for i in range(0, len(qids), cfg.batch_size)]
    total = cfg.max_steps or epochs * len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_ratio * total)) if cfg.warmup_ratio else 1.0)
    with torch.no_grad():
        base_dev = _dev_ndcg(dev_queries, docs, dev_relevant) if dev is not None else None
    best = (base_dev if base_dev is not None else -1.0, 0, weight.detach().clone(), bias.detach().clone())
    curve: dict[str, list] = {"loss": [], "dev": [] if base_dev is None else [{"step": 0, "ndcg@10": base_dev}]}
    step, patience_left = 0, cfg.dev.early_stopping_patience
    order = list(range(len(qids)))
    for epoch in range(epochs):
        rng.shuffle(order)
        losses = []
        for rows in batches:
            idx = [order[i] for i in rows]
            logits = cfg.loss.scale * embed(queries[idx]) @ docs.T
            relevant = torch.zeros_like(logits, dtype=torch.bool)
            for r, i in enumerate(idx):
                relevant[r, positives[i]] = True
            # each relevant document against every non-relevant one: -log p(pos | pos + negatives)
            negatives = torch.logsumexp(logits.masked_fill(relevant, float("-inf")), dim=1, keepdim=True)
            per_doc = torch.nn.functional.softplus(negatives - logits)
            loss = ((per_doc * relevant).sum(1) / relevant.sum(1)).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([weight, bias], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            if step >= total:
                break
        curve["loss"].append({"step": step, "loss": float(np.mean(losses)), "learning_rate": scheduler.get_last_lr()[0]})
        if dev is not None:
            with torch.no_grad():
                score = _dev_ndcg(embed(dev_queries), docs, dev_relevant)
            curve["dev"].append({"step": step, "ndcg@10": score})
            log.info("query adapter: epoch %d, loss %.4f, dev nDCG@10 %.4f", epoch + 1, np.mean(losses), score)
            if score > best[0]:
                best = (score, step, weight.detach().clone(), bias.detach().clone())
                patience_left = cfg.dev.early_stopping_patience
            elif patience_left is not None:
                patience_left -= 1
                if patience_left <= 0:
                    log.info("query adapter: early stop after epoch %d (no dev gain for %d epochs)", epoch + 1, cfg.dev.early_stopping_patience)
                    break
        else:
            best = (None, step, weight.detach().clone(), bias.detach().clone())
        if step >= total:
            break
    curve["steps"] = step
    model = add_query_adapter(base, best[2].numpy(), best[3].numpy())
    save_model_atomically(model, model_dir)
    stats = {"mined_rows": data.num_rows, "train_queries": len(qids), "train_rows": len(qids),
             "corpus_documents": len(doc_ids), "best_step": best[1], "documents_encoded_by_new_model": 0}
    log.info("query adapter: %d queries against %s, best dev at step %d", len(qids), corpus_desc, best[1])
    return RoundResult(model_dir=model_dir, best_dev=best[0] if dev is not None else None, base_dev=base_dev, curve=curve,
                       steps=step, stats=stats, dev_description=dev.description if dev else None,
                       seconds=time.perf_counter() - t0)
