"""Hybrid retrieval: fuse a dense ranking and a BM25 ranking of the same documents into one.

The fusions the RAG ecosystem uses, all weighted by ``bm25_weight`` (w; dense gets 1 - w):

- ``zscore``: each retriever's top-``depth`` scores of the query standardised (mean 0, sd 1),
  then ``(1 - w) * dense + w * bm25`` -- the same per-query standardisation as mining's hybrid
  teacher;
- ``minmax``: each list rescaled to [0, 1], then the same weighted sum (Weaviate's relative score
  fusion, OpenSearch's normalization processor, Vespa's normalised linear fusion);
- ``rrf``: ``(1 - w) / (k + dense rank) + w / (k + bm25 rank)`` (LangChain's EnsembleRetriever,
  Qdrant, Chroma; Cormack et al. 2009).

Fusion reads each retriever's top ``depth`` and nothing below it, however deep the caller
retrieved: the candidates, the statistics each list is normalised with and the scores are those
of the two top-``depth`` lists, so an evaluation that retrieved 1,000 deep scores exactly what
``embedtune search --hybrid`` serves from 100. (It did not before: reading the lists 1,000 deep
to score the other's candidates exactly gave NFCorpus hybrid(minilm) 0.3540 against 0.3597 for
the lists search fuses.) A candidate one retriever did not return gets that list's lowest score
-- for BM25, whose list shorter than ``depth`` holds every document sharing a word with the
query, exactly 0 -- (``zscore``, ``minmax``) or no contribution (``rrf``); a short list is padded
with that floor for its statistics, as mining's hybrid teacher does (standardising by only the
few matches of a short NFCorpus query cost 0.014 nDCG@10). A query that shares no word with any
document has no BM25 list and keeps its dense ranking.

The weight that works depends on the corpus and the model, so it is chosen on a dev signal
(:func:`embedtune.evaluation.choose_fusion`, never the test split) and stored with the index. Written here because
neither bm25s nor sentence-transformers fuses, and the serving path needs a per-query function
without another dependency (ranx fuses whole runs for offline evaluation).
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
from pydantic import Field

from .config import StrictModel

FusionMethod = Literal["zscore", "minmax", "rrf"]
FUSION_METHODS: tuple[str, ...] = ("zscore", "minmax", "rrf")
WEIGHT_GRID: tuple[float, ...] = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))

Run = dict[str, dict[str, float]]


class FusionConfig(StrictModel):
    """How a dense and a BM25 ranking are fused (stored in a hybrid index, overridable per call)."""

    method: FusionMethod = Field("zscore", description="zscore | minmax (normalised linear) | rrf (reciprocal rank).")
    bm25_weight: float = Field(0.5, ge=0, le=1, description="Weight of BM25 in the fusion; dense gets 1 - weight.")
    rrf_k: int = Field(60, gt=0, description="Reciprocal-rank-fusion constant (rrf only).")
    depth: int = Field(100, gt=0, description="Candidates taken from each retriever per query (and the scores each "
                       "list is normalised with).")


def _ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _normaliser(top: list[tuple[str, float]], floor: float, depth: int, method: str) -> tuple[float, float]:
    """(centre, scale) of a list's top ``depth`` scores, a short list padded with ``floor``:
    (x - centre) / scale is the normalised score."""
    values = np.fromiter((s for _, s in top), dtype=np.float64, count=len(top))
    values = np.concatenate([values, np.full(max(0, depth - len(values)), floor)])
    if method == "minmax":
        lo, span = values.min(), values.max() - values.min()
        return float(lo), float(span) if span > 0 else 1.0
    sd = values.std()
    return float(values.mean()), float(sd) if sd > 0 else 1.0


def fuse_scores(dense: Mapping[str, float], lexical: Mapping[str, float], cfg: FusionConfig) -> dict[str, float]:
    """Fused score of every document in either retriever's top ``cfg.depth`` for one query.

    ``dense`` and ``lexical`` are each retriever's results for the query, in any order; only
    their top ``cfg.depth`` are read, so a deeper list fuses the same as the served one."""
    a, b = _ranked(dense)[: cfg.depth], _ranked(lexical)[: cfg.depth]
    if not a or not b:
        return {d: float(s) for d, s in (a or b)}
    candidates = {d for d, _ in a} | {d for d, _ in b}
    w = cfg.bm25_weight
    if cfg.method == "rrf":
        rank_a = {d: r for r, (d, _) in enumerate(a, start=1)}
        rank_b = {d: r for r, (d, _) in enumerate(b, start=1)}
        return {d: (1 - w) * (1.0 / (cfg.rrf_k + rank_a[d]) if d in rank_a else 0.0)
                + w * (1.0 / (cfg.rrf_k + rank_b[d]) if d in rank_b else 0.0) for d in candidates}
    # What a document the retriever did not return scores: below its last result; for BM25, whose
    # list shorter than depth holds every document sharing a word with the query, exactly 0.
    # The teacher's statistics pad a short list the same way (a query matching 3 documents would
    # otherwise be standardised by 3 scores and a non-matching document score like a match).
    floor_a = a[-1][1]
    floor_b = 0.0 if len(b) < cfg.depth else b[-1][1]
    (ca, sa) = _normaliser(a, floor_a, cfg.depth, cfg.method)
    (cb, sb) = _normaliser(b, floor_b, cfg.depth, cfg.method)
    top_a, top_b = dict(a), dict(b)
    return {d: (1 - w) * (top_a.get(d, floor_a) - ca) / sa + w * (top_b.get(d, floor_b) - cb) / sb for d in candidates}


def fuse_runs(dense: Run, lexical: Run, cfg: FusionConfig) -> Run:
    """:func:`fuse_scores` for every query of ``dense``."""
    return {qid: fuse_scores(docs, lexical.get(qid, {}), cfg) for qid, docs in dense.items()}
