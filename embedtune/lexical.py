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
) -> tuple[list[np.ndarray], list[list[str]]]:
    """Top-``k`` BM25 (Lucene variant, k1=1.5, b=0.75, English stopwords, Snowball stemmer).

    Returns (scores, ids) per query, best first: at most ``k`` documents, and only documents that
    share at least one term with the query (bm25s fills up to k with zero-score documents, which
    a lexical retriever would not return).
    """
    import bm25s
    import Stemmer

    k = min(int(k), len(doc_ids))
    stemmer = Stemmer.Stemmer("english")
    corpus_tokens = bm25s.tokenize(list(doc_texts), stopwords="en", stemmer=stemmer, show_progress=show_progress)
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(corpus_tokens, show_progress=show_progress)
    query_tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=show_progress)
    idx, scores = retriever.retrieve(query_tokens, k=k, show_progress=show_progress, n_threads=1)
    out_scores, out_ids = [], []
    for row_idx, row_scores in zip(idx, scores):
        keep = row_scores > 0
        out_scores.append(np.asarray(row_scores[keep], dtype=np.float32))
        out_ids.append([doc_ids[int(i)] for i in row_idx[keep]])
    return out_scores, out_ids
