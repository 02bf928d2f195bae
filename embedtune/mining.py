"""Hard-negative mining: for each (query, positive) pair, the documents a retriever ranks high
that are not positives -- with the positive-aware filtering of NV-Retriever (Moreira et al. 2024,
"TopK-PercPos" / "TopK-MarginPos") so that likely false negatives are left out.

Pipeline (``mine_hard_negatives``):

1. pairs from a BEIR qrels split, a pairs JSONL or the corpus itself (:mod:`embedtune.pairs`);
   settings are validated before anything is encoded;
2. corpus embeddings from the shared on-disk cache (``encoding.encode_corpus``: mining again with
   other settings, or after ``eval``, does not re-encode), queries encoded in length-sorted batches;
3. candidates per query chunk from the dense retriever (``search.exact_search``), BM25
   (``lexical.bm25_search``) or both fused with reciprocal-rank fusion (k=60); nothing allocates a
   query x corpus matrix;
4. filters, vectorised over a chunk (:func:`filter_candidates`): known positives of the query (all
   its judgements in the source) and exact-duplicate texts of a positive are never negatives; the
   rank window keeps candidates ``range_min < rank <= range_max`` among the non-positive ones;
   then ``score > pos - |pos| * relative_margin``, ``score > pos - absolute_margin`` and
   ``score > max_score`` drop candidates, ``pos`` being the query's lowest-scoring positive (or its
   highest-scoring one with ``margin_against: strongest``, for queries with dozens of judged
   positives); an optional teacher -- a cross-encoder, or ``hybrid_teacher`` (BM25 fused with the
   model's cosine, for corpora without a cross-encoder) -- drops candidates it scores above its own
   score of that positive minus its ``margin`` and stores teacher scores for MarginMSE;
5. sampling (:func:`sample_negatives`): the ``num_negatives`` best-ranked survivors (``top``) or a
   seeded random subset of them (``random``);
6. ``DIR/dataset`` (datasets ``save_to_disk``), ``DIR/pairs.jsonl`` (same rows), ``DIR/qrels.json``
   (BEIR sources), ``DIR/report.md`` + PNGs and ``DIR/manifest.json``.

Scores used by the filters are always the base model's cosine similarities, whatever retriever
proposed the candidates: margins need one comparable scale for candidate and positive, and BM25 or
RRF scores have none. One row is written per (query, positive); all rows of a query share its
mined negatives. A row has ``num_negatives`` negatives unless fewer candidates passed the filters:
such rows are kept (``report.md`` counts them) and the trainer decides whether to drop or pad them.
Negatives given in a pairs JSONL are kept in front of the mined ones (``negative_ranks`` 0: not
retrieved) and count towards ``num_negatives``.
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .config import ModelConfig, StrictModel
from .corpus import Document, load_corpus, parse_benchmark_source
from .errors import ConfigError, InputError, first_line
from .io import atomic_write_dir
from .pairs import (
    PairSet,
    SelfPairsConfig,
    TransformersQueryGenerator,
    pairs_from_beir,
    pairs_from_corpus,
    pairs_from_jsonl,
    parse_splits,
)
from .search import BackendName

log = logging.getLogger("embedtune")

# Order in which removals are counted: a candidate is counted under the first filter that drops it.
FILTERS = ("known_positive", "duplicate_of_positive", "relative_margin", "absolute_margin", "max_score", "teacher")


# --------------------------------------------------------------------------- config


class CrossEncoderConfig(StrictModel):
    """A local CrossEncoder folder that re-scores candidates (false-negative filter + teacher scores)."""

    path: str = Field(..., description="Local sentence-transformers CrossEncoder folder.")
    margin: float = Field(
        0.0, description="Drop a candidate the cross-encoder scores above (its score of the reference positive - margin; "
        "see margin_against)."
    )
    batch_size: int = Field(32, gt=0)
    max_length: int | None = Field(None, gt=0)
    device: str = "auto"


class HybridTeacherConfig(StrictModel):
    """BM25 + the mining model's cosine as the teacher: GPL-style pseudo-labels (teacher scores for
    MarginMSE, false-negative filter) where no cross-encoder is at hand."""

    bm25_weight: float = Field(0.5, gt=0, lt=1, description="Weight of BM25 in the fusion (dense gets 1 - weight).")
    stats_depth: int = Field(100, ge=2, description="Each score is standardised by the mean/spread of the query's top this many.")
    margin: float = Field(
        0.0, description="Drop a candidate the teacher scores above (its score of the reference positive - margin)."
    )


class MineConfig(StrictModel):
    """Settings of ``embedtune mine`` (YAML keys; CLI flags override them)."""

    model: ModelConfig = ModelConfig()
    pairs: str = Field(..., description="'dataset:split' (BEIR qrels, splits may be 'train,dev'), a pairs .jsonl, or 'self'.")
    corpus: str | None = Field(None, description="Candidate documents; default: the BEIR folder of a BEIR pairs source.")
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    retriever: Literal["dense", "bm25", "hybrid"] = Field("dense", description="hybrid = dense + BM25 fused with RRF.")
    rrf_k: int = Field(60, gt=0, description="Reciprocal-rank-fusion constant (Cormack et al. 2009).")
    search_backend: Literal["exact"] | BackendName = Field(
        "exact", description="Dense search: exact (numba blocked top-k over the cached array, no copy) or a "
        "searcher backend of embedtune.search (approximate ones trade recall of candidates for speed)."
    )
    num_negatives: int = Field(8, gt=0)
    range_min: int = Field(0, ge=0, description="Skip this many best-ranked non-positive candidates.")
    range_max: int = Field(50, gt=0, description="Consider non-positive candidates up to this rank.")
    sampling: Literal["top", "random"] = "top"
    relative_margin: float | None = Field(0.05, ge=0, lt=1, description="Drop candidates scoring above pos - |pos| * margin.")
    absolute_margin: float | None = Field(None, description="Drop candidates scoring above pos - margin.")
    max_score: float | None = Field(None, description="Drop candidates scoring above this.")
    margin_against: Literal["weakest", "strongest"] = Field(
        "weakest", description="The positive the margins compare with: the query's weakest (a negative must score below "
        "every positive) or strongest (for densely judged data, where the weakest of many positives scores below "
        "almost every candidate and 'weakest' leaves no hard negatives)."
    )
    seed: int = 42
    query_chunk_size: int = Field(2048, gt=0, description="Queries searched and filtered together (bounds memory).")
    unmatched_positives: Literal["add", "error"] = Field(
        "add", description="Pairs JSONL positive found in no corpus document: add it to the candidate pool, or fail."
    )
    skip_unknown_ids: bool = Field(False, description="BEIR: drop qrels rows whose query/document id is unknown.")
    cross_encoder: CrossEncoderConfig | None = None
    hybrid_teacher: HybridTeacherConfig | None = Field(
        None, description="BM25 + dense fusion as the teacher (instead of a cross-encoder): teacher scores for MarginMSE."
    )
    self_pairs: SelfPairsConfig = SelfPairsConfig()
    cache_dir: str | None = Field(None, description="Embedding cache folder; default: the encoding module's.")
    report_examples: int = Field(5, ge=0, description="Example queries shown in report.md.")

    @model_validator(mode="after")
    def _window_fits(self) -> "MineConfig":
        if self.cross_encoder is not None and self.hybrid_teacher is not None:
            raise ValueError("choose one teacher: cross_encoder or hybrid_teacher")
        if self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be greater than range_min ({self.range_min})")
        if self.num_negatives > self.range_max - self.range_min:
            raise ValueError(
                f"num_negatives ({self.num_negatives}) does not fit in the rank window: only "
                f"{self.range_max - self.range_min} candidates between range_min={self.range_min} and "
                f"range_max={self.range_max}; lower num_negatives or widen the window"
            )
        return self


def identity_config(cfg: MineConfig) -> dict[str, Any]:
    """The settings that decide the results (the run folder's key): where the cache lives and how
    queries are chunked do not change a single row."""
    data = cfg.model_dump(mode="json")
    data.pop("cache_dir")
    data.pop("query_chunk_size")
    return data


# --------------------------------------------------------------------------- pure numpy core


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


def _reference_positive(positive_scores: np.ndarray, pair_query: np.ndarray, n_queries: int, which: str) -> np.ndarray:
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


# --------------------------------------------------------------------------- candidate pool


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


def _dense_topk(pool: CandidatePool, queries: np.ndarray, k: int, backend: str, searchers: dict) -> tuple[np.ndarray, np.ndarray]:
    """Top-k pool indices and scores over all embedding blocks, merged by score."""
    from .search import exact_search, make_searcher

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


# --------------------------------------------------------------------------- loading the inputs


@dataclass
class MiningInputs:
    corpus: dict[str, Document]
    corpus_path: Path
    source_kind: str  # beir | pairs | self
    source_files: list[Path]
    pair_set: PairSet | None  # None for 'self' until make_pairs() (generation can be costly)
    beir_folder: Path | None = None
    splits: list[str] = field(default_factory=list)

    def make_pairs(self, cfg: "MineConfig") -> PairSet:
        if self.pair_set is None:
            generator = TransformersQueryGenerator(cfg.self_pairs.qgen) if "qgen" in cfg.self_pairs.generators else None
            self.pair_set = pairs_from_corpus(self.corpus, cfg.self_pairs, seed=cfg.seed, query_generator=generator)
        return self.pair_set


def load_mining_inputs(cfg: MineConfig) -> MiningInputs:
    """Corpus and pairs, validated: every input error comes before any model is loaded. Pairs
    generated from the corpus (``self``) are made later by ``make_pairs``."""
    source = cfg.pairs.strip()
    beir_folder: Path | None = None
    splits: list[str] = []
    if source == "self":
        kind = "self"
        qgen = cfg.self_pairs.qgen
        if "qgen" in cfg.self_pairs.generators and qgen is not None and not Path(qgen.model).expanduser().is_dir():
            raise ConfigError(f"query-generation model folder not found: {qgen.model}", field="self_pairs.qgen.model")
    elif source.endswith(".jsonl") or Path(source).is_file():
        kind = "pairs"
        if not Path(source).is_file():
            raise InputError("pairs file not found", file=source, field="pairs")
    else:
        kind = "beir"
        if ":" not in source:
            raise ConfigError(f"pairs source '{source}' is not 'dataset:split', a .jsonl file, or 'self'", field="pairs")
        beir_folder, split = parse_benchmark_source(source)
        splits = parse_splits(split)
    if cfg.corpus is None and beir_folder is None:
        raise ConfigError("--corpus is required unless --pairs is a BEIR split (e.g. scifact:train)", field="corpus")
    if cfg.cross_encoder is not None and not Path(cfg.cross_encoder.path).expanduser().is_dir():
        raise ConfigError(f"cross-encoder folder not found: {cfg.cross_encoder.path}", field="cross_encoder.path")
    corpus_path = Path(cfg.corpus) if cfg.corpus is not None else beir_folder
    corpus = load_corpus(corpus_path, id_field=cfg.id_field, title_field=cfg.title_field, text_field=cfg.text_field)
    pair_set = None
    files: list[Path] = []
    if kind == "beir":
        pair_set = pairs_from_beir(beir_folder, splits, corpus, skip_unknown_ids=cfg.skip_unknown_ids)
        files = [beir_folder / "queries.jsonl", *(beir_folder / "qrels" / f"{s}.tsv" for s in splits)]
    # Empty documents (reported by load_corpus) are never a negative, a positive or a pseudo-query source.
    corpus = {doc_id: doc for doc_id, doc in corpus.items() if doc.full_text}
    if kind == "pairs":
        pair_set = pairs_from_jsonl(Path(source), corpus, unmatched_positives=cfg.unmatched_positives)
        files = [Path(source)]
    return MiningInputs(corpus, corpus_path.resolve(), kind, [f.resolve() for f in files], pair_set, beir_folder, splits)


def resolved_pairs_source(inputs: MiningInputs, source: str) -> str:
    """The pairs source with absolute paths, so a manifest can be re-run from any folder."""
    if inputs.source_kind == "beir":
        return f"{inputs.beir_folder.resolve()}:{','.join(inputs.splits)}"
    if inputs.source_kind == "pairs":
        return str(Path(source).resolve())
    return source


# --------------------------------------------------------------------------- mining


@dataclass
class MiningResult:
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    stats: dict[str, Any]
    timings: dict[str, float]


def _exclusion_codes(
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


def _isin_sorted(codes: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(codes.shape, bool)
    pos = np.searchsorted(sorted_set, codes)
    pos = np.minimum(pos, sorted_set.size - 1)
    return sorted_set[pos] == codes


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
    from tqdm.auto import tqdm

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
    floor = _reference_positive(positive_scores, pair_query, len(query_ids), cfg.margin_against)

    pos_codes, dup_codes, excluded_per_query = _exclusion_codes(pair_set, pool, query_ids, query_index)
    query_keys = np.array([zlib.crc32(q.encode("utf-8")) for q in query_ids], dtype=np.uint64)

    bm25_ranked = None
    if cfg.retriever in ("bm25", "hybrid"):
        from .lexical import bm25_search

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
        teacher_floor = _reference_positive(teacher_positive, pair_query, len(query_ids), cfg.margin_against)
        timings["teacher"] += time.perf_counter() - t

    searchers: dict = {}
    chunks = range(0, len(query_ids), cfg.query_chunk_size)
    for start in tqdm(chunks, desc="Mining", unit="chunk", disable=not show_progress or len(chunks) < 2):
        stop = min(start + cfg.query_chunk_size, len(query_ids))
        q = np.ascontiguousarray(query_emb[start:stop], dtype=np.float32)
        depth = int(min(n_pool, cfg.range_max + excluded_per_query[start:stop].max()))
        t = time.perf_counter()
        if cfg.retriever == "bm25":
            cand = bm25_ranked[start:stop]
            scores = None
        else:
            scores, cand = _dense_topk(pool, q, depth, cfg.search_backend, searchers)
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
        is_pos = _isin_sorted(codes, pos_codes) & valid
        is_dup = _isin_sorted(codes, dup_codes) & valid
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
            "%s positive%s. Loosen relative_margin/absolute_margin, widen range_max%s if you want hard negatives.",
            100 * empty, 100 * (counts.get("relative_margin", 0) + counts.get("absolute_margin", 0)) / window,
            cfg.margin_against,
            ", and with many judged positives per query the weakest scores below most candidates"
            if cfg.margin_against == "weakest" else "",
            " or set margin_against: strongest" if cfg.margin_against == "weakest" else "",
        )
    return MiningResult(rows=rows, counts=dict(counts), stats=stats, timings=dict(timings))


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
        from .lexical import bm25_index

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
            top, _ = _dense_topk(pool, self.query_emb[lo : lo + 2048], self.depth, "exact", {})
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
        from .lexical import bm25_scores

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
                top = np.partition(scores[: self.n_pool], self.n_pool - self.depth)[self.n_pool - self.depth :]
                self.bm25_stats[qi] = (float(top.mean()), float(top.std()))
            mean, std = self.bm25_stats[qi]
            if std > 0:
                z_bm25[group] = (scores[d_idx[group]] - mean) / std
        lexical = self.cos_mean[q_idx] + self.cos_std[q_idx] * z_bm25
        return ((1 - self.weight) * cos + self.weight * lexical).astype(np.float32)


def load_cross_encoder(cfg: CrossEncoderConfig) -> Any:
    from sentence_transformers.cross_encoder import CrossEncoder

    from .errors import ModelError
    from .models import check_model_folder, resolve_device

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


# --------------------------------------------------------------------------- the stage


def _hash_inputs(inputs: MiningInputs, cfg: MineConfig) -> dict[str, str]:
    from .manifest import hash_path
    from .models import model_fingerprint, resolve_model_path

    hashes = {"corpus": hash_path(inputs.corpus_path)}
    if inputs.corpus_path.is_dir() and (inputs.corpus_path / "corpus.jsonl").is_file():
        hashes["corpus"] = hash_path(inputs.corpus_path / "corpus.jsonl")  # not the qrels of the folder
    for f in inputs.source_files:
        hashes[f"pairs:{f.name}"] = hash_path(f)
    hashes["model"] = model_fingerprint(resolve_model_path(cfg.model.name))
    if cfg.cross_encoder is not None:
        hashes["cross_encoder"] = model_fingerprint(Path(cfg.cross_encoder.path).expanduser())
    if cfg.pairs.strip() == "self" and cfg.self_pairs.qgen is not None and "qgen" in cfg.self_pairs.generators:
        hashes["query_generator"] = model_fingerprint(Path(cfg.self_pairs.qgen.model).expanduser())
    return hashes


def _save_dataset(rows: list[dict[str, Any]], folder: Path, with_teacher: bool) -> None:
    """datasets.save_to_disk into a temp folder, then rename: a killed run leaves no half dataset."""
    import datasets

    features = {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "positive_id": datasets.Value("string"),
        "positive": datasets.Value("string"),
        "positive_score": datasets.Value("float32"),
        "negative_ids": datasets.Sequence(datasets.Value("string")),
        "negatives": datasets.Sequence(datasets.Value("string")),
        "negative_scores": datasets.Sequence(datasets.Value("float32")),
        "negative_ranks": datasets.Sequence(datasets.Value("int32")),
    }
    if with_teacher:
        features["teacher_positive_score"] = datasets.Value("float32")
        features["teacher_negative_scores"] = datasets.Sequence(datasets.Value("float32"))
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    atomic_write_dir(folder / "dataset", lambda tmp: ds.save_to_disk(str(tmp)))


def mine_hard_negatives(
    cfg: MineConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The ``mine`` stage: pairs -> candidates -> filters -> sampled negatives -> mined dataset.

    Returns a summary (also the manifest's ``metrics``); ``summary["skipped"]`` is True when the
    folder already holds the same completed run.
    """
    from .encoding import encode_corpus, encode_texts
    from .io import atomic_write_json, atomic_write_jsonl, remove_stale_temp_files
    from .manifest import prepare_run_folder, read_manifest, stage_key, write_manifest
    from .mining_report import write_report
    from .models import load_model, model_info

    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    t = time.perf_counter()
    inputs = load_mining_inputs(cfg)
    given_pairs = cfg.pairs
    cfg = cfg.model_copy(update={"corpus": str(inputs.corpus_path), "pairs": resolved_pairs_source(inputs, cfg.pairs)})
    timings["load_inputs"] = time.perf_counter() - t
    input_hashes = _hash_inputs(inputs, cfg)
    key = stage_key(identity_config(cfg), input_hashes)
    if prepare_run_folder(out, "mine", key, overwrite=overwrite):
        manifest = read_manifest(out) or {}
        return {**manifest.get("metrics", {}), "skipped": True, "out": str(out)}
    remove_stale_temp_files(out)
    for leftover in out.glob(".tmp-dataset-*"):
        shutil.rmtree(leftover, ignore_errors=True)

    t = time.perf_counter()
    pair_set = inputs.make_pairs(cfg)
    timings["make_pairs"] = time.perf_counter() - t
    model = load_model(cfg.model)
    teacher: Teacher | None = CrossEncoderTeacher(cfg.cross_encoder) if cfg.cross_encoder is not None else None

    corpus_ids = list(inputs.corpus)
    corpus_texts = [d.full_text for d in inputs.corpus.values()]
    extra_ids = list(pair_set.extra_docs)
    extra_texts = [d.full_text for d in pair_set.extra_docs.values()]
    pool = CandidatePool(ids=corpus_ids + extra_ids, texts=corpus_texts + extra_texts)

    cache_kwargs = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    t = time.perf_counter()
    pool.blocks.append(encode_corpus(model, cfg.model, corpus_ids, corpus_texts, **cache_kwargs))
    if extra_ids:
        pool.blocks.append(encode_corpus(model, cfg.model, extra_ids, extra_texts, **cache_kwargs))
    timings["encode_corpus"] = time.perf_counter() - t

    t = time.perf_counter()
    query_text: dict[str, str] = {}
    for p in pair_set.pairs:
        query_text.setdefault(p.query_id, p.query)
    query_ids = list(query_text)
    query_texts = [query_text[q] for q in query_ids]
    query_emb = encode_texts(
        model, query_texts, prompt=cfg.model.query_prompt, batch_size=cfg.model.batch_size,
        precision=cfg.model.precision, show_progress=show_progress, task="query",
    )
    generated = [p.positive for p in pair_set.pairs if not p.positive_in_pool]
    generated_emb = None
    if generated:
        generated_emb = encode_texts(
            model, generated, prompt=cfg.model.document_prompt, batch_size=cfg.model.batch_size,
            precision=cfg.model.precision, show_progress=show_progress,
        )
    given = sorted({n for p in pair_set.pairs for n in p.given_negatives[: cfg.num_negatives]})
    given_emb = None
    if given:
        vecs = encode_texts(
            model, given, prompt=cfg.model.document_prompt, batch_size=cfg.model.batch_size,
            precision=cfg.model.precision, show_progress=show_progress,
        )
        given_emb = dict(zip(given, vecs))
    timings["encode_queries"] = time.perf_counter() - t
    if cfg.hybrid_teacher is not None:
        t = time.perf_counter()
        extra = dict(zip(generated, generated_emb if generated_emb is not None else [])) | (given_emb or {})
        teacher = HybridTeacher(cfg.hybrid_teacher, query_texts, query_emb, pool, extra)
        timings["teacher_index"] = time.perf_counter() - t

    result = mine_negatives(
        pair_set, pool, query_emb, query_ids, query_texts, generated_emb, cfg,
        given_negative_emb=given_emb, teacher=teacher, show_progress=show_progress,
    )
    timings.update({f"mine_{k}": v for k, v in result.timings.items()})

    t = time.perf_counter()
    _save_dataset(result.rows, out, teacher is not None)
    atomic_write_jsonl(out / "pairs.jsonl", result.rows)
    artifacts = ["dataset", "pairs.jsonl"]
    if pair_set.qrels is not None:
        atomic_write_json(out / "qrels.json", pair_set.qrels)
        artifacts.append("qrels.json")
    timings["write"] = time.perf_counter() - t

    summary = {
        "source": inputs.source_kind,
        "queries": result.stats["queries"],
        "pairs": result.stats["pairs"],
        "pool_documents": result.stats["pool_documents"],
        "extra_documents": len(extra_ids),
        "rows_full": result.stats["rows_full"],
        "rows_short": result.stats["rows_short"],
        "rows_without_negatives": result.stats["rows_without_negatives"],
        "negatives": result.stats["negatives"],
        "num_negatives": cfg.num_negatives,
        "filter_counts": {k: result.counts.get(k, 0) for k in ("retrieved", *FILTERS[:2], "window_candidates", *FILTERS[2:], "eligible", "chosen")},
        "positive_score_mean": float(np.mean(result.stats["positive_scores"])) if result.stats["pairs"] else None,
        "negative_score_mean": float(np.mean(result.stats["negative_scores"])) if result.stats["negatives"] else None,
        "pair_source": pair_set.stats,
    }
    t = time.perf_counter()
    artifacts += write_report(out, cfg, summary, result)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    models = {"embedding": model_info(cfg.model, model)}
    if cfg.cross_encoder is not None:
        models["cross_encoder"] = {"path": str(Path(cfg.cross_encoder.path).expanduser().resolve())}
    extra = {"pairs_source": {"kind": inputs.source_kind, "given": given_pairs, "resolved": cfg.pairs, "splits": inputs.splits}}
    write_manifest(
        out, stage="mine", key=key, config=cfg, inputs=input_hashes, models=models,
        metrics=summary, timings={k: round(v, 3) for k, v in timings.items()}, artifacts=artifacts, extra=extra,
    )
    return {**summary, "skipped": False, "out": str(out), "timings": timings}
