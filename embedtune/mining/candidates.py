"""Candidate retrieval: the pool of documents negatives are drawn from, dense top-k per query chunk and
reciprocal-rank fusion with BM25."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def rrf_fuse(rankings: list[np.ndarray], depth: int, k: int = 60) -> np.ndarray:
    """Fuse ranked candidate lists (each Q x K_i pool indices, -1 = none) by reciprocal-rank fusion:
    score(d) = sum over lists of 1 / (k + rank of d). Returns Q x depth indices (-1 padded), best first.

    Written with numpy because the libraries that fuse runs (ranx, trec tools) work on dicts of
    strings, one query at a time; this sorts (query, doc) codes once for the whole chunk.
    """
    q = rankings[0].shape[0]
    ids = np.concatenate([r.astype(np.int64) for r in rankings], axis=1)
    ranks = np.concatenate([np.broadcast_to(np.arange(1, r.shape[1] + 1), r.shape) for r in rankings], axis=1)
    contrib = np.where(ids >= 0, 1.0 / (k + ranks), 0.0)
    rows = np.broadcast_to(np.arange(q)[:, None], ids.shape)
    valid = ids >= 0
    rows_v, ids_v, contrib_v = rows[valid], ids[valid], contrib[valid]
    order = np.lexsort((ids_v, rows_v))
    rows_s, ids_s, contrib_s = rows_v[order], ids_v[order], contrib_v[order]
    out = np.full((q, depth), -1, dtype=np.int64)
    if rows_s.size == 0:
        return out
    start = np.flatnonzero(np.r_[True, (rows_s[1:] != rows_s[:-1]) | (ids_s[1:] != ids_s[:-1])])
    g_rows, g_ids = rows_s[start], ids_s[start]
    g_scores = np.add.reduceat(contrib_s, start)
    # best first within each query; ties broken by document index for determinism
    order = np.lexsort((g_ids, -g_scores, g_rows))
    g_rows, g_ids = g_rows[order], g_ids[order]
    row_start = np.searchsorted(g_rows, np.arange(q))
    pos = np.arange(g_rows.size) - row_start[g_rows]
    keep = pos < depth
    out[g_rows[keep], pos[keep]] = g_ids[keep]
    return out



@dataclass
class CandidatePool:
    """Corpus documents plus extra documents (pairs positives found in no document), with their
    embeddings kept as separate blocks so a memory-mapped corpus is never copied."""

    ids: list[str]
    texts: list[str]
    blocks: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = {doc_id: i for i, doc_id in enumerate(self.ids)}

    @property
    def offsets(self) -> list[int]:
        out, n = [], 0
        for b in self.blocks:
            out.append(n)
            n += b.shape[0]
        return out

    def vectors(self, idx: np.ndarray) -> np.ndarray:
        """Embeddings of pool indices (any shape; -1 gives zeros), as float32."""
        idx = np.asarray(idx)
        flat = idx.ravel()
        dim = self.blocks[0].shape[1]
        out = np.zeros((flat.size, dim), dtype=np.float32)
        for off, block in zip(self.offsets, self.blocks):
            sel = (flat >= off) & (flat < off + block.shape[0])
            if sel.any():
                out[sel] = block[flat[sel] - off]
        return out.reshape(*idx.shape, dim)



def dense_topk(pool: CandidatePool, queries: np.ndarray, k: int, backend: str, searchers: dict) -> tuple[np.ndarray, np.ndarray]:
    """Top-k pool indices and scores over all embedding blocks, merged by score."""
    from ..search import exact_search, make_searcher

    scores_parts, idx_parts = [], []
    for b, (off, block) in enumerate(zip(pool.offsets, pool.blocks)):
        kb = min(k, block.shape[0])
        if backend == "exact":
            s, i = exact_search(queries, block, kb)
        else:
            if b not in searchers:
                searcher = make_searcher(backend=backend, dim=block.shape[1])
                searcher.add([str(j) for j in range(block.shape[0])], np.asarray(block, dtype=np.float32))
                searchers[b] = searcher
            s, found = searchers[b].search(queries, kb)
            i = np.array([[int(x) for x in row] + [-1] * (kb - len(row)) for row in found], dtype=np.int64)
            s = np.asarray(s, dtype=np.float32)
        i = np.asarray(i, dtype=np.int64)
        scores_parts.append(np.where(i >= 0, s, -np.inf).astype(np.float32))
        idx_parts.append(np.where(i >= 0, i + off, -1))
    scores = np.concatenate(scores_parts, axis=1)
    idx = np.concatenate(idx_parts, axis=1)
    if len(scores_parts) > 1:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, idx = np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.concatenate([idx, np.full((idx.shape[0], pad), -1, np.int64)], axis=1)
        scores = np.concatenate([scores, np.full((idx.shape[0], pad), -np.inf, np.float32)], axis=1)
    return scores, idx
