"""Numba kernels for exact top-k search: inner products (the vector index) and BM25 (hybrid search).

Why a hand-written kernel when faiss exists: faiss may be missing (it is an optional wheel on
some platforms), and faiss wants the whole corpus in RAM as float32, while this kernel streams
a memory-mapped float32 or float16 matrix in chunks, so corpora larger than RAM stay on disk.
float16 documents are converted a tile at a time inside the kernel, by every thread at once,
so they cost half the memory traffic of float32 and no full-size conversion.

How it stays at matrix-multiply speed: scores are computed a tile at a time (a block of
queries x a block of documents) with ``np.dot``, which numba lowers to BLAS sgemm; each thread
then scans its tile while it is still in cache, and a score reaches the per-query heap only if
it beats the heap's current worst (a threshold test that almost always fails once the heap is
full). The caller limits BLAS to one thread: the parallelism is ours, one tile per thread.

Result heaps are min-heaps keyed on (score, -index): the root is the worst kept result, and
among equal scores the larger index counts as worse, so ties resolve to the lower index, the
same order as a stable sort by descending score.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# A tile row is checked for a score above the threshold in groups of this many, with a
# branch-free count that LLVM vectorises; only groups with a hit go through the heap.
_GROUP = 64


@intrinsic
def _half_to_float(typingctx, bits):
    """float16 bits (a uint16) to float32. numba has no float16 type on the CPU, but LLVM
    does: ``fpext half`` compiles to the hardware conversion (vcvtph2ps with F16C, fcvt on
    ARM), and LLVM vectorises the loop around it."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def rows_as_float32(docs, start, stop, buffer):
    """Rows ``start:stop`` of ``docs`` as float32: a view of float32 documents, or float16
    documents (passed as their uint16 bits) converted into ``buffer``."""
    if docs.dtype == np.float32:
        return docs[start:stop]
    return docs[start:stop].view(np.float16).astype(np.float32)


@overload(rows_as_float32)
def _rows_as_float32(docs, start, stop, buffer):
    if docs.dtype == types.float32:
        return lambda docs, start, stop, buffer: docs[start:stop]
    if docs.dtype == types.uint16:

        def convert(docs, start, stop, buffer):
            dim = docs.shape[1]
            out = buffer[: (stop - start) * dim].reshape((stop - start, dim))
            src = docs[start:stop]
            for i in range(stop - start):
                row_in, row_out = src[i], out[i]
                for j in range(dim):
                    row_out[j] = _half_to_float(row_in[j])
            return out

        return convert
    return None


@njit(cache=True, nogil=True, inline="always")
def _worse(s1, i1, s2, i2):
    """Whether result (s1, i1) ranks below (s2, i2)."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@njit(cache=True, nogil=True)
def _replace_root(heap_scores, heap_ids, score, idx):
    """Put (score, idx) in place of the heap's worst element and restore the heap."""
    k = heap_scores.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        right = child + 1
        if right < k and _worse(heap_scores[right], heap_ids[right], heap_scores[child], heap_ids[child]):
            child = right
        if _worse(heap_scores[child], heap_ids[child], score, idx):
            heap_scores[pos] = heap_scores[child]
            heap_ids[pos] = heap_ids[child]
            pos = child
        else:
            break
    heap_scores[pos] = score
    heap_ids[pos] = idx


@njit(cache=True, nogil=True)
def _scan_row(row, first_id, heap_scores, heap_ids):
    """Offer every score of ``row`` (document ids ``first_id + j``) to one query's heap.

    Ids only grow along a heap's life (a heap sees its documents in index order), so a score
    equal to the threshold never ranks above the root and ``>`` is the exact test.
    """
    n = row.shape[0]
    threshold = heap_scores[0]
    for start in range(0, n, _GROUP):
        # Index a slice from 0: numba then knows indices are not negative (no wraparound
        # check), and LLVM turns the count into plain vector loads and compares.
        group = row[start : start + _GROUP]
        hits = 0
        for j in range(group.shape[0]):
            hits += group[j] > threshold
        if hits:
            for j in range(group.shape[0]):
                if group[j] > threshold:
                    _replace_root(heap_scores, heap_ids, group[j], first_id + start + j)
                    threshold = heap_scores[0]


@njit(cache=True, nogil=True, parallel=True)
def topk_update(queries, docs, first_id, heap_scores, heap_ids, query_block, doc_block):
    """Offer ``docs`` (ids ``first_id ..``) to the running top-k heaps of every query.

    queries: (Q, d) float32, C-contiguous; docs: (n, d) C-contiguous, float32 or the uint16
    bits of float16 values.
    heap_scores / heap_ids: (S, Q, k) running heaps, S >= 1 "splits". Split s sees a
    contiguous share of ``docs``, so few queries still keep every thread busy (S = threads)
    while many queries use S = 1 and one query block per thread. Merge with ``topk_finish``.
    """
    n_queries = queries.shape[0]
    n_docs = docs.shape[0]
    n_splits = heap_scores.shape[0]
    n_qblocks = (n_queries + query_block - 1) // query_block
    split_len = (n_docs + n_splits - 1) // n_splits
    for item in prange(n_qblocks * n_splits):
        qb = item // n_splits
        split = item - qb * n_splits
        q0 = qb * query_block
        q1 = min(n_queries, q0 + query_block)
        nq = q1 - q0
        d_end = min(n_docs, (split + 1) * split_len)
        tile_buffer = np.empty(nq * doc_block, dtype=np.float32)
        rows_buffer = np.empty(doc_block * docs.shape[1], dtype=np.float32)  # float16 only
        for d0 in range(split * split_len, d_end, doc_block):
            d1 = min(d_end, d0 + doc_block)
            rows = rows_as_float32(docs, d0, d1, rows_buffer)
            tile = tile_buffer[: nq * (d1 - d0)].reshape((nq, d1 - d0))
            if nq == 1:  # matrix-vector: sgemv streams the documents once, sgemm would pack them
                np.dot(rows, queries[q0], tile[0])
            else:
                np.dot(queries[q0:q1], rows.T, tile)
            for r in range(nq):
                _scan_row(tile[r], first_id + d0, heap_scores[split, q0 + r], heap_ids[split, q0 + r])


@njit(cache=True, nogil=True, parallel=True)
def topk_finish(heap_scores, heap_ids):
    """Merge the S heaps of each query and sort: (Q, k) scores descending, ids, ties by id."""
    n_splits, n_queries, k = heap_scores.shape
    scores = np.empty((n_queries, k), dtype=np.float32)
    ids = np.empty((n_queries, k), dtype=np.int64)
    for q in prange(n_queries):
        hs = heap_scores[0, q].copy()
        hi = heap_ids[0, q].copy()
        for s in range(1, n_splits):
            for j in range(k):
                if _worse(hs[0], hi[0], heap_scores[s, q, j], heap_ids[s, q, j]):
                    _replace_root(hs, hi, heap_scores[s, q, j], heap_ids[s, q, j])
        # Heap sort: pop the worst into the last free slot, so the row ends best-first.
        for last in range(k - 1, -1, -1):
            scores[q, last] = hs[0]
            ids[q, last] = hi[0]
            if last > 0:
                _replace_root(hs[:last], hi[:last], hs[last], hi[last])
    return scores, ids


@njit(cache=True, nogil=True, parallel=True)
def bm25_topk(indptr, indices, data, num_docs, token_ptr, tokens, heap_scores, heap_ids):
    """BM25 top-k of many queries over a bm25s index (its CSC matrix of precomputed per-term
    document scores: term t's documents are ``indices[indptr[t]:indptr[t+1]]``): one query per
    thread, each summing its terms' postings into a dense score row and offering the row to its
    heap (initialised to score 0: only documents with a query term enter).

    Query q's token ids are ``tokens[token_ptr[q]:token_ptr[q+1]]`` (a repeated token counts
    again, as in bm25s). Why not bm25s: it scores one query per call with ``np.add.at`` and
    leaves the top-k to the caller -- about 7 ms a query at 1M passages, one thread.
    """
    for q in prange(token_ptr.shape[0] - 1):
        scores = np.zeros(num_docs, dtype=np.float32)
        for t in range(token_ptr[q], token_ptr[q + 1]):
            term = tokens[t]
            for j in range(indptr[term], indptr[term + 1]):
                scores[indices[j]] += data[j]
        _scan_row(scores, 0, heap_scores[0, q], heap_ids[0, q])
