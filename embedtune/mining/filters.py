"""The false-negative filters (NV-Retriever's positive-aware margins, known positives, duplicates, the
rank window) and the sampling of the survivors, vectorised over a chunk of queries."""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np

from ..pairs import PairSet
from .candidates import CandidatePool


def rank_among_non_positives(valid: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate among the valid, non-excluded ones of its row (0 for the others)."""
    usable = valid & ~excluded
    return np.where(usable, np.cumsum(usable, axis=1), 0)



def filter_candidates(
    scores: np.ndarray,
    valid: np.ndarray,
    is_positive: np.ndarray,
    is_duplicate: np.ndarray,
    positive_floor: np.ndarray,
    *,
    range_min: int,
    range_max: int,
    relative_margin: float | None = None,
    absolute_margin: float | None = None,
    max_score: float | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Which ranked candidates may be negatives (Q x K bool), and how many each filter removed.

    ``scores`` Q x K candidate scores in retrieval order, ``valid`` False for padding,
    ``is_positive`` / ``is_duplicate`` known positives and exact-duplicate texts of a positive,
    ``positive_floor`` (Q,) the score of each query's reference positive (its weakest, or its
    strongest with ``margin_against: strongest``). Positives and
    duplicates are counted wherever they were retrieved; the margin filters count only candidates
    inside the rank window, each candidate under the first filter that drops it.
    """
    scores = np.asarray(scores, dtype=np.float32)
    floor = np.asarray(positive_floor, dtype=np.float32)[:, None]
    counts: dict[str, int] = {}
    counts["known_positive"] = int((valid & is_positive).sum())
    counts["duplicate_of_positive"] = int((valid & is_duplicate & ~is_positive).sum())
    rank = rank_among_non_positives(valid, is_positive | is_duplicate)
    in_window = (rank > range_min) & (rank <= range_max)
    counts["window_candidates"] = int(in_window.sum())
    keep = in_window.copy()
    rules = (
        ("relative_margin", relative_margin, lambda: scores > floor - np.abs(floor) * relative_margin),
        ("absolute_margin", absolute_margin, lambda: scores > floor - absolute_margin),
        ("max_score", max_score, lambda: scores > max_score),
    )
    for name, setting, too_close in rules:
        if setting is None:
            counts[name] = 0
            continue
        removed = keep & too_close()
        counts[name] = int(removed.sum())
        keep &= ~removed
    return keep, counts



def reference_positive(positive_scores: np.ndarray, pair_query: np.ndarray, n_queries: int, which: str) -> np.ndarray:
    """Per query, the score of the positive the margins compare with (its weakest or strongest)."""
    if which == "strongest":
        ref = np.full(n_queries, -np.inf, dtype=np.float32)
        np.maximum.at(ref, pair_query, positive_scores)
    else:
        ref = np.full(n_queries, np.inf, dtype=np.float32)
        np.minimum.at(ref, pair_query, positive_scores)
    return ref



def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash (Steele et al. 2014): random keys that depend only on (seed, query,
    document), so ``random`` sampling does not change with chunk size or query order."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))



def sample_negatives(
    eligible: np.ndarray,
    num_negatives: int,
    sampling: Literal["top", "random"] = "top",
    *,
    seed: int = 0,
    query_keys: np.ndarray | None = None,
    candidate_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Positions (Q x num_negatives, -1 where too few) of the chosen candidates, in rank order.

    ``top`` takes the best-ranked eligible candidates; ``random`` a uniform subset of them keyed
    by (seed, query key, candidate id).
    """
    q, k = eligible.shape
    if sampling == "top":
        key = np.where(eligible, np.arange(k)[None, :], k).astype(np.float64)
    else:
        qk = np.zeros(q, np.uint64) if query_keys is None else query_keys.astype(np.uint64)
        cid = np.broadcast_to(np.arange(k), (q, k)) if candidate_ids is None else candidate_ids
        with np.errstate(over="ignore"):
            mixed = _splitmix64(_splitmix64(np.uint64(seed) ^ qk)[:, None] ^ cid.astype(np.int64).astype(np.uint64))
        key = np.where(eligible, (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53), 2.0)
    n = min(num_negatives, k)
    chosen = np.argsort(key, axis=1, kind="stable")[:, :n]
    ok = np.take_along_axis(eligible, chosen, axis=1)
    chosen = np.where(ok, chosen, k)  # push the missing ones to the end, then restore rank order
    chosen.sort(axis=1)
    chosen[chosen == k] = -1
    if n < num_negatives:
        chosen = np.concatenate([chosen, np.full((q, num_negatives - n), -1, chosen.dtype)], axis=1)
    return chosen



def exclusion_codes(
    pair_set: PairSet, pool: CandidatePool, query_ids: list[str], query_index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted codes q * N + doc of known positives and of exact-duplicate texts of a positive,
    and the number of excluded documents per query (to size the search)."""
    n = len(pool.ids)
    by_text: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(pool.texts):
        by_text[text].append(i)
    positive_texts: dict[str, set[str]] = defaultdict(set)
    for p in pair_set.pairs:
        positive_texts[p.query_id].add(p.positive)
    pos_codes, dup_codes = [], []
    per_query = np.zeros(len(query_ids), dtype=np.int64)
    for qid in query_ids:
        qi = query_index[qid]
        known = {pool.index[d] for d in pair_set.known_positives.get(qid, ()) if d in pool.index}
        texts = positive_texts[qid] | {pool.texts[i] for i in known}
        dups = {j for t in texts for j in by_text.get(t, ())} - known
        pos_codes.extend(qi * n + i for i in known)
        dup_codes.extend(qi * n + j for j in dups)
        per_query[qi] = len(known) + len(dups)
    return np.sort(np.asarray(pos_codes, np.int64)), np.sort(np.asarray(dup_codes, np.int64)), per_query



def isin_sorted(codes: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(codes.shape, bool)
    pos = np.searchsorted(sorted_set, codes)
    pos = np.minimum(pos, sorted_set.size - 1)
    return sorted_set[pos] == codes
