"""Hybrid retrieval: fuse a dense ranking and a BM25 ranking of the same documents into one.

The fusions the RAG ecosystem uses, all weighted by ``bm25_weight`` (w; dense gets 1 - w):

- ``zscore``: each retriever's top-``depth`` scores of the query standardised (mean 0, sd 1),
  then ``(1 - w) * dense + w * bm25`` -- the same per-query standardisation as mining's hybrid
  teacher;
- ``minmax``: each list rescaled to [0, 1], then the same weighted sum (Weaviate's relative score
  fusion, OpenSearch's normalization processor, Vespa's normalised linear fusion);
- ``rrf``: ``(1 - w) / (k + dense rank) + w / (k + bm25 rank)`` (LangChain's EnsembleRetriever,
  Qdrant, Chroma; Cormack et al. 2009).

A document missing from one list ranked below that list's cut-off: for ``zscore`` and ``minmax``
it gets the list's lowest normalised score, for ``rrf`` no contribution. A query that shares no
word with any document has no BM25 list and keeps its dense ranking.

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
    depth: int = Field(100, gt=0, description="Candidates taken from each retriever per query.")


def _top(scores: Mapping[str, float], depth: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]


def _normalised(items: list[tuple[str, float]], method: str, rrf_k: int) -> tuple[dict[str, float], float]:
    """Normalised score per document and the value a missing document gets."""
    if method == "rrf":
        return {d: 1.0 / (rrf_k + r) for r, (d, _) in enumerate(items, start=1)}, 0.0
    values = np.fromiter((s for _, s in items), dtype=np.float64, count=len(items))
    if method == "minmax":
        lo, span = values.min(), values.max() - values.min()
        norm = (values - lo) / span if span > 0 else np.ones_like(values)
    else:
        sd = values.std()
        norm = (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)
    return {d: float(v) for (d, _), v in zip(items, norm)}, float(norm.min())


def fuse_scores(dense: Mapping[str, float], lexical: Mapping[str, float], cfg: FusionConfig) -> dict[str, float]:
    """Fused score of every document in either retriever's top ``cfg.depth`` for one query."""
    dense_top, lexical_top = _top(dense, cfg.depth), _top(lexical, cfg.depth)
    if not lexical_top or not dense_top:
        only = dense_top or lexical_top
        return {d: float(s) for d, s in only}
    a, a_missing = _normalised(dense_top, cfg.method, cfg.rrf_k)
    b, b_missing = _normalised(lexical_top, cfg.method, cfg.rrf_k)
    w = cfg.bm25_weight
    return {d: (1 - w) * a.get(d, a_missing) + w * b.get(d, b_missing) for d in a.keys() | b.keys()}


def fuse_runs(dense: Run, lexical: Run, cfg: FusionConfig) -> Run:
    """:func:`fuse_scores` for every query of ``dense``."""
    return {qid: fuse_scores(docs, lexical.get(qid, {}), cfg) for qid, docs in dense.items()}
