"""BM25 through bm25s: the lexical baseline in evaluation and a candidate source for mining."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def bm25_search(
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    queries: Sequence[str],
    k: int,
    *,
    show_progress: bool = False,
) -> tuple[np.ndarray, list[list[str]]]:
    """Top-``k`` BM25 (Lucene variant, k1=1.5, b=0.75, English stopwords) for each query.

    Returns (scores (Q, k') float32 best first, ids); k' = min(k, number of documents).
    """
    import bm25s

    k = min(int(k), len(doc_ids))
    corpus_tokens = bm25s.tokenize(list(doc_texts), stopwords="en", show_progress=show_progress)
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(corpus_tokens, show_progress=show_progress)
    query_tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=show_progress)
    # bm25s returns k results even when a query shares no token with any document (score 0).
    idx, scores = retriever.retrieve(query_tokens, k=k, show_progress=show_progress, n_threads=1)
    ids = [[doc_ids[int(i)] for i in row] for row in idx]
    return np.asarray(scores, dtype=np.float32), ids
