"""Teachers that re-score candidates: a cross-encoder the user supplies, or the hybrid teacher (BM25
fused with the model's cosine) for corpora without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from .candidates import CandidatePool, dense_topk
from .config import CrossEncoderConfig, HybridTeacherConfig


class Teacher:
    """Scores (query, document) texts for the teacher filter and MarginMSE labels."""

    margin: float = 0.0

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        raise NotImplementedError



class CrossEncoderTeacher(Teacher):
    def __init__(self, cfg: CrossEncoderConfig):
        self.cfg, self.margin = cfg, cfg.margin
        self.model = load_cross_encoder(cfg)

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Raw cross-encoder logits: MarginMSE distils score differences, which a sigmoid would squash."""
        import torch

        if not pairs:
            return np.zeros(0, np.float32)
        scores = self.model.predict(
            pairs, batch_size=self.cfg.batch_size, activation_fn=torch.nn.Identity(), convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(scores, dtype=np.float32).reshape(-1)



class HybridTeacher(Teacher):
    """``(1 - w) * cos(q, d) + w * (mu_q + sigma_q * z_bm25(q, d))``: the BM25 score standardised by
    the mean and spread of the query's top-``stats_depth`` BM25 scores, then put on the scale of its
    top-``stats_depth`` cosine scores (mean mu_q, spread sigma_q). The fused score is thus in cosine
    units, so MarginMSE can distil it into a cosine student as it is. Standardising over the top of
    each list, not the whole corpus, matters: BM25 is heavy-tailed, and corpus-wide z-scores made the
    teacher's margins 2.6x the model's own on SciFact (top-100: comparable). Written here because
    neither sentence-transformers nor bm25s fuses scores (both only rank).

    Texts are looked up, not re-encoded: queries by their text, documents among the pool and the
    ``extra`` texts (generated positives, given negatives: text -> embedding). Extra texts are
    indexed for BM25 together with the pool; their share of the document frequencies
    shifts BM25's idf slightly, the statistics use the pool documents only.
    """

    def __init__(self, cfg: HybridTeacherConfig, query_texts: list[str], query_emb: np.ndarray, pool: "CandidatePool",
                 extra: dict[str, np.ndarray]):
        from ..lexical import bm25_index

        self.margin, self.weight = cfg.margin, cfg.bm25_weight
        self.query_index = {t: i for i, t in enumerate(query_texts)}
        self.query_emb = np.asarray(query_emb, dtype=np.float32)
        self.pool, self.n_pool = pool, len(pool.ids)
        self.depth = min(cfg.stats_depth, self.n_pool)
        self.doc_index = {t: i for i, t in enumerate(pool.texts)}
        for text in extra:
            self.doc_index.setdefault(text, len(self.doc_index))
        extra_texts = [t for t, i in self.doc_index.items() if i >= self.n_pool]
        self.extra_emb = np.zeros((len(extra_texts), self.query_emb.shape[1]), np.float32)
        if extra_texts:
            self.extra_emb = np.stack([np.asarray(extra[t], dtype=np.float32) for t in extra_texts])
        # cosine statistics of every query's top documents (exact search, in chunks)
        self.cos_mean = np.empty(len(query_texts), np.float64)
        self.cos_std = np.empty(len(query_texts), np.float64)
        for lo in range(0, len(query_texts), 2048):
            top, _ = dense_topk(pool, self.query_emb[lo : lo + 2048], self.depth, "exact", {})
            self.cos_mean[lo : lo + 2048], self.cos_std[lo : lo + 2048] = top.mean(1), top.std(1)
        self.bm25_stats: dict[int, tuple[float, float]] = {}
        self.bm25 = bm25_index(list(pool.texts) + extra_texts)

    def _doc_vectors(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.query_emb.shape[1]), np.float32)
        in_pool = idx < self.n_pool
        if in_pool.any():
            out[in_pool] = self.pool.vectors(idx[in_pool])
        if (~in_pool).any():
            out[~in_pool] = self.extra_emb[idx[~in_pool] - self.n_pool]
        return out

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        from ..lexical import bm25_scores

        if not pairs:
            return np.zeros(0, np.float32)
        q_idx = np.array([self.query_index[q] for q, _ in pairs], dtype=np.int64)
        d_idx = np.array([self.doc_index[d] for _, d in pairs], dtype=np.int64)
        cos = np.einsum("pd,pd->p", self.query_emb[q_idx], self._doc_vectors(d_idx))
        z_bm25 = np.zeros(len(pairs), np.float64)
        order = np.argsort(q_idx, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(q_idx[order])) + 1):
            qi = int(q_idx[group[0]])
            scores = bm25_scores(self.bm25, pairs[group[0]][0])
            if scores is None:
                continue  # no lexical evidence: BM25 adds nothing to this query's scores
            if qi not in self.bm25_stats:
                self.bm25_stats[qi] = top_stats(scores[: self.n_pool], self.depth)
            z_bm25[group] = standardise(scores[d_idx[group]], self.bm25_stats[qi])
        lexical = self.cos_mean[q_idx] + self.cos_std[q_idx] * z_bm25
        return fuse(cos, lexical, self.weight)


def top_stats(scores: np.ndarray, depth: int) -> tuple[float, float]:
    """Mean and spread of the ``depth`` highest of one query's scores."""
    top = np.partition(scores, len(scores) - depth)[len(scores) - depth :]
    return float(top.mean()), float(top.std())


def standardise(scores: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    mean, std = stats
    return (scores - mean) / std if std > 0 else np.zeros(len(scores), np.float64)


def fuse(cos: np.ndarray, lexical: np.ndarray, bm25_weight: float) -> np.ndarray:
    return ((1 - bm25_weight) * cos + bm25_weight * lexical).astype(np.float32)


def hybrid_teacher_rows(cos: np.ndarray, query_texts: list[str], bm25: Any, bm25_weight: float, depth: int) -> np.ndarray:
    """The hybrid teacher's score of each query against every document BM25 indexes: ``cos`` holds the
    base model's cosines (queries x documents, in the index's order). The same scores as
    :meth:`HybridTeacher.score` gives those pairs when its pool is that corpus; computed a row at a
    time, for query-side distillation over the whole corpus (``train.hybrid_teacher``)."""
    from ..lexical import bm25_scores

    depth = min(depth, cos.shape[1])
    out = np.empty(cos.shape, np.float32)
    for i, (row, text) in enumerate(zip(cos, query_texts)):
        cos_mean, cos_std = top_stats(row, depth)
        scores = bm25_scores(bm25, text)
        z = np.zeros(len(row)) if scores is None else standardise(scores, top_stats(scores, depth))
        out[i] = fuse(row, cos_mean + cos_std * z, bm25_weight)
    return out



def load_cross_encoder(cfg: CrossEncoderConfig) -> Any:
    from sentence_transformers.cross_encoder import CrossEncoder

    from ..errors import ModelError
    from ..models import check_model_folder, resolve_device

    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise ModelError("cross-encoder folder not found", file=path)
    check_model_folder(path)
    try:
        return CrossEncoder(
            str(path), device=resolve_device(cfg.device), local_files_only=True,
            max_length=cfg.max_length, model_kwargs={"use_safetensors": True},
        )
    except Exception as err:
        msg = first_line(err)
        raise ModelError(f"cannot load cross-encoder: {msg}", file=path) from None
