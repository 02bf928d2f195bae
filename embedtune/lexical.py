"""BM25 through bm25s: the lexical baseline in evaluation, a candidate source for mining and the
lexical half of mining's hybrid teacher. One setting for all of them: Lucene BM25 (k1=1.5,
b=0.75), English stopwords, Snowball stemmer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _tokenize(texts: Sequence[str], *, return_ids: bool = True, show_progress: bool = False):
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=return_ids, show_progress=show_progress)


def bm25_index(doc_texts: Sequence[str], *, show_progress: bool = False):
    """A bm25s retriever over ``doc_texts`` with the project's BM25 settings."""
    import bm25s

    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(_tokenize(doc_texts, show_progress=show_progress), show_progress=show_progress)
    return retriever


def bm25_scores(retriever, query: str) -> np.ndarray | None:
    """BM25 score of ``query`` against every indexed document, or None when no query word occurs
    in any document (no lexical evidence at all)."""
    ids = retriever.get_tokens_ids(_tokenize([query], return_ids=False)[0])  # unknown words are left out
    return retriever.get_scores_from_ids(ids) if ids else None


def bm25_retrieve(retriever, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-``k`` (row indices, scores) per query, best first (ties by row): only documents that
    share at least one term with the query (bm25s fills up to k with zero-score documents, which
    a lexical retriever would not return).

    Scored by :func:`embedtune._kernels.bm25_topk` on bm25s' matrices, all queries at once (one
    per thread), not by bm25s' ``retrieve``: that call costs 3.5 ms of set-up per call (10,000
    passages; the scoring itself 0.13 ms), and its scoring runs one query at a time."""
    from . import _kernels

    s = retriever.scores
    num_docs = int(s["num_docs"])
    k = min(int(k), num_docs)
    token_lists = [retriever.get_tokens_ids(words) for words in _tokenize(list(queries), return_ids=False)]
    token_ptr = np.zeros(len(token_lists) + 1, dtype=np.int64)
    token_ptr[1:] = np.cumsum([len(t) for t in token_lists])
    tokens = np.fromiter((t for ts in token_lists for t in ts), dtype=np.int64, count=int(token_ptr[-1]))
    heap_scores = np.zeros((1, len(token_lists), k), dtype=np.float32)
    heap_ids = np.full((1, len(token_lists), k), -1, dtype=np.int64)
    if k and len(token_lists):
        _kernels.bm25_topk(np.asarray(s["indptr"]), np.asarray(s["indices"]), np.asarray(s["data"], dtype=np.float32),
                           num_docs, token_ptr, tokens, heap_scores, heap_ids)
    scores, rows = _kernels.topk_finish(heap_scores, heap_ids)
    out = []
    for q_scores, q_rows in zip(scores, rows):
        keep = q_rows >= 0
        out.append((q_rows[keep].astype(np.int64), q_scores[keep]))
    return out


def save_bm25(retriever, folder: str | Path) -> None:
    """The index's sparse matrices, vocabulary and parameters (npy + json, no pickle, no texts)."""
    retriever.save(str(folder), show_progress=False)


def load_bm25(folder: str | Path, *, mmap: bool = True):
    """A retriever written by :func:`save_bm25`; its matrices memory-mapped (opens at once)."""
    import bm25s

    return bm25s.BM25.load(str(folder), mmap=mmap, show_progress=False, verbosity=0)


def bm25_search(
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    queries: Sequence[str],
    k: int,
    *,
    show_progress: bool = False,
) -> tuple[list[np.ndarray], list[list[str]]]:
    """Top-``k`` BM25 documents per query: (scores, ids) per query, best first (see
    :func:`bm25_retrieve`)."""
    retriever = bm25_index(doc_texts, show_progress=show_progress)
    found = bm25_retrieve(retriever, queries, k)
    return [scores for _, scores in found], [[doc_ids[int(i)] for i in rows] for rows, _ in found]
