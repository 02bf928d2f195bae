"""The mining loop: candidates -> filters -> teacher -> sampled negatives, one row per (query, positive)."""

from __future__ import annotations

import logging
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import progress
from ..pairs import PairSet
from .candidates import CandidatePool, dense_topk, rrf_fuse
from .config import MineConfig
from .filters import (
    exclusion_codes,
    filter_candidates,
    isin_sorted,
    reference_positive,
    sample_negatives,
)
from .teachers import Teacher

log = logging.getLogger("embedtune")


@dataclass
class MiningResult:
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    stats: dict[str, Any]
    timings: dict[str, float]



def mine_negatives(
    pair_set: PairSet,
    pool: CandidatePool,
    query_emb: np.ndarray,
    query_ids: list[str],
    query_texts: list[str],
    generated_positive_emb: np.ndarray | None,
    cfg: MineConfig,
    *,
    given_negative_emb: dict[str, np.ndarray] | None = None,
    teacher: "Teacher | None" = None,
    show_progress: bool = True,
) -> MiningResult:
    """Mine negatives for every pair, given the embeddings (the array-level core of ``mine``).

    ``query_emb`` rows follow ``query_ids``; ``generated_positive_emb`` has one row per pair whose
    positive is not a pool document (in pair order); ``given_negative_emb`` maps a given negative's
    text to its embedding; ``teacher`` (a cross-encoder or the hybrid) re-scores the candidates.
    """
    timings: dict[str, float] = defaultdict(float)
    pairs = pair_set.pairs
    n_pool = len(pool.ids)
    query_index = {qid: i for i, qid in enumerate(query_ids)}
    pair_query = np.array([query_index[p.query_id] for p in pairs], dtype=np.int64)
    pair_pool = np.array([pool.index[p.positive_id] if p.positive_in_pool else -1 for p in pairs], dtype=np.int64)

    # Scores of the positives (and the reference positive per query for the margins).
    positive_vecs = pool.vectors(np.maximum(pair_pool, 0))
    if (pair_pool < 0).any():
        positive_vecs[pair_pool < 0] = generated_positive_emb
    positive_scores = np.einsum("pd,pd->p", query_emb[pair_query].astype(np.float32), positive_vecs)
    floor = reference_positive(positive_scores, pair_query, len(query_ids), cfg.margin_against)

    pos_codes, dup_codes, excluded_per_query = exclusion_codes(pair_set, pool, query_ids, query_index)
    query_keys = np.array([zlib.crc32(q.encode("utf-8")) for q in query_ids], dtype=np.uint64)

    bm25_ranked = None
    if cfg.retriever in ("bm25", "hybrid"):
        from ..lexical import bm25_search

        t = time.perf_counter()
        depth = int(min(n_pool, cfg.range_max + excluded_per_query.max()))
        bm25_scores, bm25_ids = bm25_search(pool.ids, pool.texts, query_texts, depth)
        bm25_ranked = np.full((len(query_ids), depth), -1, dtype=np.int64)
        for qi, (ranked, row_scores) in enumerate(zip(bm25_ids, bm25_scores)):
            # bm25s fills k slots even with documents sharing no term (score 0): not candidates
            idx = [pool.index[d] for d, sc in zip(ranked[:depth], row_scores) if sc > 0]
            bm25_ranked[qi, : len(idx)] = idx
        timings["bm25"] += time.perf_counter() - t

    counts: dict[str, int] = defaultdict(int)
    chosen_all: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
    teacher_positive = np.full(len(pairs), np.nan, dtype=np.float32)
    teacher_floor = np.full(len(query_ids), np.inf, dtype=np.float32)
    if teacher is not None:
        t = time.perf_counter()
        teacher_positive[:] = teacher.score([(p.query, p.positive) for p in pairs])
        teacher_floor = reference_positive(teacher_positive, pair_query, len(query_ids), cfg.margin_against)
        timings["teacher"] += time.perf_counter() - t

    searchers: dict = {}
    chunks = range(0, len(query_ids), cfg.query_chunk_size)
    for start in progress.track(chunks, f"Mining {len(query_ids):,} queries (chunks)", enabled=show_progress and len(chunks) > 1):
        stop = min(start + cfg.query_chunk_size, len(query_ids))
        q = np.ascontiguousarray(query_emb[start:stop], dtype=np.float32)
        depth = int(min(n_pool, cfg.range_max + excluded_per_query[start:stop].max()))
        t = time.perf_counter()
        if cfg.retriever == "bm25":
            cand = bm25_ranked[start:stop]
            scores = None
        else:
            scores, cand = dense_topk(pool, q, depth, cfg.search_backend, searchers)
            if cfg.retriever == "hybrid":
                cand = rrf_fuse([cand, bm25_ranked[start:stop]], depth, cfg.rrf_k)
                scores = None
        timings["search"] += time.perf_counter() - t

        t = time.perf_counter()
        valid = cand >= 0
        if scores is None:  # filter on dense cosine, whatever proposed the candidates
            scores = np.einsum("qd,qkd->qk", q, pool.vectors(cand))
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        codes = np.arange(start, stop, dtype=np.int64)[:, None] * n_pool + np.where(valid, cand, 0)
        is_pos = isin_sorted(codes, pos_codes) & valid
        is_dup = isin_sorted(codes, dup_codes) & valid
        eligible, chunk_counts = filter_candidates(
            scores, valid, is_pos, is_dup, floor[start:stop],
            range_min=cfg.range_min, range_max=cfg.range_max,
            relative_margin=cfg.relative_margin, absolute_margin=cfg.absolute_margin, max_score=cfg.max_score,
        )
        for key, value in chunk_counts.items():
            counts[key] += value
        counts["retrieved"] += int(valid.sum())
        timings["filter"] += time.perf_counter() - t

        teacher_cand = None
        if teacher is not None:
            t = time.perf_counter()
            rows, cols = np.nonzero(eligible)
            teacher_cand = np.full(cand.shape, np.nan, dtype=np.float32)
            if rows.size:
                teacher_cand[rows, cols] = teacher.score([(query_texts[start + r], pool.texts[cand[r, c]]) for r, c in zip(rows, cols)])
            too_close = eligible & (teacher_cand > (teacher_floor[start:stop] - teacher.margin)[:, None])
            counts["teacher"] += int(too_close.sum())
            eligible &= ~too_close
            timings["teacher"] += time.perf_counter() - t

        t = time.perf_counter()
        counts["eligible"] += int(eligible.sum())
        picked = sample_negatives(
            eligible, cfg.num_negatives, cfg.sampling, seed=cfg.seed, query_keys=query_keys[start:stop], candidate_ids=cand
        )
        ok = picked >= 0
        safe = np.where(ok, picked, 0)
        neg_idx = np.where(ok, np.take_along_axis(cand, safe, 1), -1)
        neg_scores = np.take_along_axis(scores, safe, 1)
        # 1-based rank in the retriever's candidate list (positives included)
        neg_ranks = np.where(ok, safe + 1, 0)
        neg_teacher = np.take_along_axis(teacher_cand, safe, 1) if teacher_cand is not None else None
        chosen_all.append((neg_idx, neg_scores, neg_ranks, ok, neg_teacher))
        timings["sample"] += time.perf_counter() - t

    t = time.perf_counter()
    neg_idx = np.concatenate([c[0] for c in chosen_all]) if chosen_all else np.zeros((0, cfg.num_negatives), np.int64)
    neg_scores = np.concatenate([c[1] for c in chosen_all]) if chosen_all else np.zeros((0, cfg.num_negatives), np.float32)
    neg_ranks = np.concatenate([c[2] for c in chosen_all]) if chosen_all else np.zeros((0, cfg.num_negatives), np.int64)
    neg_ok = np.concatenate([c[3] for c in chosen_all]) if chosen_all else np.zeros((0, cfg.num_negatives), bool)
    neg_teacher = np.concatenate([c[4] for c in chosen_all]) if teacher is not None and chosen_all else None

    given_teacher: dict[tuple[str, str], float] = {}
    if teacher is not None and any(p.given_negatives for p in pairs):
        t_teacher = time.perf_counter()
        todo = sorted({(p.query, n) for p in pairs for n in p.given_negatives[: cfg.num_negatives]})
        given_teacher = dict(zip(todo, teacher.score(todo).tolist()))
        timings["teacher"] += time.perf_counter() - t_teacher

    rows: list[dict[str, Any]] = []
    given_ids: dict[str, str] = {}
    text_to_id = {text: doc_id for doc_id, text in zip(pool.ids, pool.texts)}
    for pi, pair in enumerate(pairs):
        qi = pair_query[pi]
        row_ids, row_texts, row_scores, row_ranks, row_teacher = [], [], [], [], []
        qvec = query_emb[qi].astype(np.float32)
        for text in pair.given_negatives[: cfg.num_negatives]:
            doc_id = text_to_id.get(text) or given_ids.setdefault(text, f"given-negative-{len(given_ids)}")
            row_ids.append(doc_id)
            row_texts.append(text)
            row_scores.append(float(qvec @ given_negative_emb[text]))
            row_ranks.append(0)
            if teacher is not None:
                row_teacher.append(float(given_teacher[(pair.query, text)]))
        for j in np.flatnonzero(neg_ok[qi]):
            if len(row_ids) >= cfg.num_negatives:
                break
            doc = int(neg_idx[qi, j])
            if pool.ids[doc] in row_ids:
                continue
            row_ids.append(pool.ids[doc])
            row_texts.append(pool.texts[doc])
            row_scores.append(float(neg_scores[qi, j]))
            row_ranks.append(int(neg_ranks[qi, j]))
            if neg_teacher is not None:
                row_teacher.append(float(neg_teacher[qi, j]))
        row = {
            "query_id": pair.query_id,
            "query": pair.query,
            "positive_id": pair.positive_id,
            "positive": pair.positive,
            "positive_score": float(positive_scores[pi]),
            "negative_ids": row_ids,
            "negatives": row_texts,
            "negative_scores": row_scores,
            "negative_ranks": row_ranks,
        }
        if teacher is not None:
            row["teacher_positive_score"] = float(teacher_positive[pi])
            row["teacher_negative_scores"] = row_teacher
        rows.append(row)
    timings["rows"] += time.perf_counter() - t

    n_neg = np.array([len(r["negative_ids"]) for r in rows], dtype=np.int64)
    stats = {
        "queries": len(query_ids),
        "pairs": len(pairs),
        "pool_documents": n_pool,
        "rows_full": int((n_neg >= cfg.num_negatives).sum()),
        "rows_short": int(((n_neg > 0) & (n_neg < cfg.num_negatives)).sum()),
        "rows_without_negatives": int((n_neg == 0).sum()),
        "negatives": int(n_neg.sum()),
        "positive_scores": positive_scores,
        "negative_scores": np.array([s for r in rows for s in r["negative_scores"]], dtype=np.float32),
    }
    counts["chosen"] = int(neg_ok.sum())
    empty = stats["rows_without_negatives"] / max(1, len(rows))
    if empty > 0.5:
        window = max(1, counts.get("window_candidates", 0))
        log.warning(
            "%.1f%% of the rows got no hard negative (the trainer pads them with random documents). "
            "The margin filters removed %.0f%% of the rank window: they compare each candidate with the query's "
            "%s positive%s. Loosen relative_margin/absolute_margin, widen range_max%s if you want hard negatives "
            "(with dozens of judged positives per query they may be unjudged relevant documents: measure on dev).",
            100 * empty, 100 * (counts.get("relative_margin", 0) + counts.get("absolute_margin", 0)) / window,
            cfg.margin_against,
            ", and with many judged positives per query the weakest scores below most candidates"
            if cfg.margin_against == "weakest" else "",
            " or set margin_against: strongest" if cfg.margin_against == "weakest" else "",
        )
    return MiningResult(rows=rows, counts=dict(counts), stats=stats, timings=dict(timings))
