"""The dev split training is judged on -- a BEIR dev split or a seeded held-out slice of the training
queries, never the test split -- and its nDCG@10 evaluator."""

from __future__ import annotations

import contextlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig
from ..corpus import load_beir, parse_benchmark_source
from ..errors import ConfigError, InputError
from ..io import atomic_write_json
from ..mined import MinedData
from .config import TrainConfig
from .processes import is_main_process
from .rows import mined_corpus

DEV_NAME = "dev"



NDCG_KEY = f"eval_{DEV_NAME}_cosine_ndcg@10"  # what InformationRetrievalEvaluator logs, see dev_evaluator



@dataclass
class DevSplit:
    """Dev queries, their relevant documents and the corpus they are searched in."""

    queries: dict[str, str]
    relevant: dict[str, set[str]]
    corpus: dict[str, str]
    description: str
    exclude_query_ids: set[str] = field(default_factory=set)  # rows of these queries are not trained on



def make_dev_split(data: MinedData, cfg: TrainConfig) -> DevSplit | None:
    """A BEIR dev split (``dev.source``) or a seeded held-out slice of the training queries."""
    dev = cfg.dev
    if not dev.enabled:
        return None
    rng = random.Random(cfg.seed)
    if dev.source:
        folder, split = parse_benchmark_source(dev.source)
        if split == "test":
            raise ConfigError("the dev split must not be the test split (choose e.g. 'nfcorpus:dev')", field="dev.source")
        beir = load_beir(folder, split)
        queries = dict(beir.queries)
        relevant = {q: {d for d, s in docs.items() if s > 0} for q, docs in beir.qrels.items()}
        corpus = {doc_id: doc.full_text for doc_id, doc in beir.corpus.items()}
        description = f"{folder}:{split}"
        exclude = set(queries)
    else:
        qids = sorted(set(data.columns["query_id"]))
        if len(qids) < 2:
            raise ConfigError("holding out dev queries needs at least 2 distinct queries; set dev.enabled: false", field="dev")
        n_hold = max(1, min(len(qids) - 1, round(dev.holdout_fraction * len(qids))))
        held = set(rng.sample(qids, n_hold))
        queries, relevant = {}, {}
        for qid, query, pid in zip(data.columns["query_id"], data.columns["query"], data.columns["positive_id"]):
            if qid in held:
                queries[qid] = query
                relevant.setdefault(qid, set()).add(pid)
        if data.qrels:  # all graded positives mining knew of, not only the rows it kept
            for qid in held:
                relevant[qid] |= {d for d, s in data.qrels.get(qid, {}).items() if s > 0}
        corpus, corpus_desc = mined_corpus(data)
        description = f"{n_hold} held-out training queries ({dev.holdout_fraction:.0%}, seed {cfg.seed}) against {corpus_desc}"
        exclude = held
    relevant = {q: r for q, r in relevant.items() if q in queries and r}
    if dev.max_queries and len(relevant) > dev.max_queries:
        keep = set(rng.sample(sorted(relevant), dev.max_queries))
        relevant = {q: r for q, r in relevant.items() if q in keep}
        description += f", {dev.max_queries} sampled"
    queries = {q: queries[q] for q in relevant}
    missing = {d for r in relevant.values() for d in r} - set(corpus)
    if missing:
        raise InputError(f"{len(missing)} relevant document id(s) of dev queries are not in the corpus (e.g. '{sorted(missing)[0]}')", field="positive_id")
    # a query-side model's candidates all search the base model's corpus vectors, cached by training: the whole
    # corpus costs no encoding, and a sample can reorder them (SciFact: merged(0.75) ahead of tuned on 1,500
    # documents, behind on all 5,183 -- eval/results/query_side.md)
    if dev.corpus_max_docs and len(corpus) > dev.corpus_max_docs and cfg.side != "query":
        corpus = _sample_corpus(corpus, relevant, data, queries, dev.corpus_max_docs, rng)
        description += f", corpus sampled to {len(corpus)} docs"
    return DevSplit(queries=queries, relevant=relevant, corpus=corpus, description=description, exclude_query_ids=exclude)



def _sample_corpus(corpus, relevant, data: MinedData, queries, max_docs: int, rng: random.Random) -> dict[str, str]:
    keep = {d for r in relevant.values() for d in r}
    for qid, neg_ids in zip(data.columns["query_id"], data.columns["negative_ids"]):
        if qid in queries:
            keep.update(d for d in neg_ids if d in corpus)
    others = sorted(set(corpus) - keep)
    keep.update(rng.sample(others, max(0, min(len(others), max_docs - len(keep)))))
    return {d: corpus[d] for d in corpus if d in keep}



def dev_evaluator(dev: DevSplit, model_cfg: ModelConfig, precision: str):
    import torch
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    class AutocastIREvaluator(InformationRetrievalEvaluator):
        """Encodes dev queries and corpus in the training precision: the trainer's autocast does
        not cover evaluators, and in fp32 each evaluation of a CPU run costs as much as ~3x more."""

        def __call__(self, model, *args, **kwargs):
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            with torch.autocast(device_type=model.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return super().__call__(model, *args, **kwargs)

    return AutocastIREvaluator(
        queries=dev.queries, corpus=dev.corpus, relevant_docs=dev.relevant, name=DEV_NAME,
        batch_size=model_cfg.batch_size, score_functions={"cosine": cos_sim}, main_score_function="cosine",
        query_prompt=model_cfg.query_prompt or None, corpus_prompt=model_cfg.document_prompt or None,
        write_csv=False, show_progress_bar=False,
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100], map_at_k=[100],
    )



def base_dev_score(evaluator, model, work_dir: Path, *, fresh: bool) -> float:
    """The untrained model's dev nDCG@10 (step 0 of the curve), kept in ``dev_base.json`` so a
    resumed run does not recompute it. Evaluated outside the trainer so that step 0 never counts
    as the "best checkpoint" (there is no checkpoint of it to load at the end)."""
    path = work_dir / "dev_base.json"
    if not fresh and path.is_file():
        return float(json.loads(path.read_text())["ndcg@10"])
    with contextlib.redirect_stdout(sys.stderr):
        metrics = evaluator(model)
    score = float(metrics[f"{DEV_NAME}_cosine_ndcg@10"])
    if is_main_process():
        atomic_write_json(path, {"ndcg@10": score})
    return score
