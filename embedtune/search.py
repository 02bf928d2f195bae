"""Nearest-neighbour search over embeddings: one small interface, several backends.

Scores are inner products; callers L2-normalise vectors so that they are cosine similarities.

- :func:`exact_search` -- array in, top-k (scores, row indices) out. Used by evaluation and
  hard-negative mining; the corpus may be a float32 or float16 ``np.memmap`` larger than RAM.
- :class:`Searcher` -- an index of vectors under string ids that can grow, shrink, be saved and
  be loaded again. Made by :func:`make_searcher`, reopened by :func:`load_searcher`.

Backends (``Searcher.backend``):

==================  ===========================================================================
exact-numba         exact; our numba kernel; vectors float32 or float16, memory-mapped on load
faiss-flat          exact; faiss ``IndexFlatIP``
faiss-ivf           approximate; ``IndexIVFFlat`` trained on the first ``add`` (nlist, nprobe)
faiss-hnsw          approximate; ``IndexHNSWFlat`` (M, efConstruction, efSearch)
faiss-gpu-flat      faiss-flat searched on the GPU in float16
faiss-gpu-ivf       faiss-ivf searched on the GPU
auto                faiss-gpu-flat if a GPU is visible, else faiss-flat, else exact-numba
==================  ===========================================================================

A saved searcher is a folder: ``searcher.json`` (backend, dim, count, dtype, options, files),
``ids.json`` (the string id of each row) and the backend's vectors or index file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, get_args

import numpy as np

from .errors import ConfigError, IndexMismatchError, InputError, first_line
from .io import atomic_save_npy, atomic_write_json, atomic_write_with

log = logging.getLogger("embedtune")

META_FILE = "searcher.json"
IDS_FILE = "ids.json"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "index.faiss"
LABELS_FILE = "labels.npy"
FORMAT_VERSION = 1

# faiss refuses k above this on the GPU; such searches run on the CPU copy of the index.
GPU_MAX_K = 2048

# Tile of the exact kernel: QUERY_BLOCK queries x DOC_BLOCK documents, one sgemm each. Sized so
# that sgemm runs near peak and the tile is still in cache when it is scanned for the top k.
QUERY_BLOCK = 512
DOC_BLOCK = 1024
# Fewer queries per thread than this: split the documents between threads instead.
MIN_QUERIES_PER_THREAD = 64
# Documents handed to the kernel per call, about this many bytes as float32: float16 or
# memory-mapped corpora are converted / paged in one chunk at a time.
CHUNK_BYTES = 32 << 20


# --------------------------------------------------------------------------- exact search


def exact_search(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of each query against the rows of ``docs``.

    ``docs`` is any (N, d) float array, typically a float32 or float16 ``np.memmap``; it is read
    one chunk at a time and never copied whole, and no (Q, N) score matrix is ever built.
    Returns ``(scores, indices)``, both (Q, min(k, N)): float32 scores best first, int64 row
    indices into ``docs``; equal scores are ordered by row index.
    """
    queries = _as_matrix(queries, "queries")
    docs = np.asanyarray(docs)
    if docs.ndim != 2 or docs.shape[1] == 0 or not np.issubdtype(docs.dtype, np.floating):
        raise InputError(f"documents must be a 2-d float array with columns, got shape {docs.shape} of {docs.dtype}")
    n_docs, dim = docs.shape
    _check_search_args(queries, dim, n_docs, k)
    k = min(int(k), n_docs)
    n_queries = queries.shape[0]
    if n_queries == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)

    import numba

    from . import _kernels

    threads = numba.get_num_threads()
    if n_queries >= threads * MIN_QUERIES_PER_THREAD:
        n_splits = 1  # one block of queries per thread, each against all documents
        query_block = min(QUERY_BLOCK, -(-n_queries // threads))
    else:
        n_splits = threads  # all queries per thread, each against its share of the documents
        query_block = n_queries
    heap_scores = np.full((n_splits, n_queries, k), -np.inf, dtype=np.float32)
    heap_ids = np.full((n_splits, n_queries, k), -1, dtype=np.int64)
    chunk_rows = max(DOC_BLOCK, CHUNK_BYTES // (4 * dim) // DOC_BLOCK * DOC_BLOCK)
    # float32 and float16 chunks go to the kernel as they are (float16 as its uint16 bits,
    # converted tile by tile in the kernel); np.asarray drops the memmap subclass but keeps
    # the mapping. Other dtypes or layouts are converted here, a chunk at a time.
    native = docs.dtype in (np.float32, np.float16) and docs.flags.c_contiguous
    buffer = None if native else np.empty((min(chunk_rows, n_docs), dim), dtype=np.float32)
    with _KERNEL_LOCK, _single_threaded_blas():
        for start in range(0, n_docs, chunk_rows):
            stop = min(n_docs, start + chunk_rows)
            if native:
                chunk = np.asarray(docs[start:stop])
                if chunk.dtype == np.float16:
                    chunk = chunk.view(np.uint16)
            else:
                chunk = buffer[: stop - start]
                chunk[...] = docs[start:stop]
            _kernels.topk_update(queries, chunk, start, heap_scores, heap_ids, query_block, DOC_BLOCK)
    return _kernels.topk_finish(heap_scores, heap_ids)


@functools.cache
def _blas_controller():
    # Load the BLAS that numba's np.dot calls (scipy's) before threadpoolctl looks for
    # libraries: a controller made earlier would not see it, and could not limit it.
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _single_threaded_blas():
    """While the kernel runs, BLAS must not start threads of its own: every numba thread
    already calls sgemm on its own tile, and nested threads would oversubscribe the cores."""
    return _blas_controller().limit(limits=1, user_api="blas")


# One search at a time: each already uses every core, and two overlapping BLAS limits could
# restore each other's setting (leaving BLAS single-threaded for the rest of the process).
_KERNEL_LOCK = threading.Lock()


# --------------------------------------------------------------------------- argument checks


def _as_matrix(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"{what} must be a 2-d numeric array, got shape {x.shape} of {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    # min and max propagate NaN and show an infinity, without a temporary as big as x.
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        raise InputError(f"{what} contain NaN or infinite values")
    return x


def _check_search_args(queries: np.ndarray, dim: int, count: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a whole number >= 1, got {k!r}")
    if queries.shape[1] != dim:
        raise IndexMismatchError(f"queries have dimension {queries.shape[1]} but the index has dimension {dim}")
    if count == 0:
        raise IndexMismatchError("the index is empty (0 vectors): add vectors before searching")


# --------------------------------------------------------------------------- searchers


class Searcher:
    """Vectors under unique string ids; ``search`` returns the best ``k`` by inner product.

    Subclasses store the vectors; this class keeps the ids (row ``i`` of the backend is
    ``ids[i]``) and checks every argument, so the backends see only valid input.
    """

    backend: str = ""
    # option -> default. Options are whole numbers >= 1 (None where the default is None:
    # chosen later); a string option is checked by its class.
    _defaults: dict[str, Any] = {}

    def __init__(self, dim: int, **options: Any) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"dim must be a whole number >= 1, got {dim!r}")
        self.dim = int(dim)
        self.options = self._check_options(options)
        self._ids: list[str] = []

    # ---- public interface

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._ids)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append ``vectors`` (n, dim) under ``ids`` (n distinct strings not yet present)."""
        ids = list(ids)
        vectors = _as_matrix(vectors, "vectors")
        if vectors.shape[1] != self.dim:
            raise IndexMismatchError(f"vectors have dimension {vectors.shape[1]} but the index has dimension {self.dim}")
        if len(ids) != vectors.shape[0]:
            raise InputError(f"{len(ids)} ids for {vectors.shape[0]} vectors")
        if not all(isinstance(i, str) for i in ids):
            raise InputError("ids must be strings")
        new = set(ids)
        if len(new) != len(ids):
            twice = next(i for i, n in Counter(ids).items() if n > 1)
            raise InputError(f"duplicate ids in one add, e.g. {twice!r}")
        present = new.intersection(self._ids)
        if present:
            raise InputError(f"{len(present)} ids are already in the index, e.g. {min(present)!r}; remove them first")
        if ids:
            self._add(vectors)
            self._ids.extend(ids)

    def remove(self, ids: Iterable[str]) -> None:
        """Delete the given ids (all must be present); the other rows keep their order."""
        gone = set(ids)
        if not gone:
            return
        positions = np.array([i for i, id_ in enumerate(self._ids) if id_ in gone], dtype=np.int64)
        if len(positions) != len(gone):
            missing = gone.difference(self._ids)
            raise IndexMismatchError(f"{len(missing)} ids to remove are not in the index, e.g. {min(missing)!r}")
        self._remove(positions)
        kept = np.ones(len(self._ids), dtype=bool)
        kept[positions] = False
        self._ids = [id_ for id_, keep in zip(self._ids, kept) if keep]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Best ``min(k, ntotal)`` ids per query row, best first, and their float32 scores.

        An approximate backend may find fewer than k for a query: its id list is then shorter
        and the missing scores are -inf.
        """
        queries = _as_matrix(queries, "queries")
        _check_search_args(queries, self.dim, self.ntotal, k)
        k = min(int(k), self.ntotal)
        if queries.shape[0] == 0:
            return np.empty((0, k), np.float32), []
        scores, rows = self._search(queries, k)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32, copy=False)
        ids = self._ids
        return scores, [[ids[r] for r in row if r >= 0] for row in rows.tolist()]

    def vectors(self) -> np.ndarray:
        """The stored vectors, (ntotal, dim) float32, row ``i`` under ``ids[i]`` (to hand them to
        another store without encoding again)."""
        if self.ntotal == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(self._all_vectors(), dtype=np.float32)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the searcher to ``folder``; ``searcher.json`` is written last, so a folder with
        it is complete (load checks each file against it)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = self._save(folder)
        atomic_write_json(folder / IDS_FILE, self._ids)
        meta = {
            "format_version": FORMAT_VERSION,
            "backend": self.backend,
            "dim": self.dim,
            "count": self.ntotal,
            "dtype": self._dtype_name(),
            "options": self.options,
            "files": [IDS_FILE, *files],
        }
        atomic_write_json(folder / META_FILE, meta)
        return folder

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, dim={self.dim}, ntotal={self.ntotal}, options={self.options})"

    # ---- backend hooks

    def _add(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _remove(self, positions: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and row positions (-1: none found), best first."""
        raise NotImplementedError

    def _all_vectors(self) -> np.ndarray:
        """Every stored vector, in row order."""
        raise NotImplementedError

    def _save(self, folder: Path) -> list[str]:
        """Write the backend's files; return their names."""
        raise NotImplementedError

    def _load_files(self, folder: Path, meta: dict) -> None:
        """Read the backend's files written by ``_save`` and check them against ``meta``."""
        raise NotImplementedError

    def _dtype_name(self) -> str:
        return "float32"

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(cls._defaults))
        if unknown:
            allowed = ", ".join(sorted(cls._defaults)) or "none"
            raise ConfigError(f"backend {cls.backend!r} has no option {unknown[0]!r} (options: {allowed})")
        checked = {**cls._defaults, **options}
        for name, value in checked.items():
            default = cls._defaults[name]
            if isinstance(default, str) or (value is None and default is None):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"backend {cls.backend!r}: option {name} must be a whole number >= 1, got {value!r}")
            checked[name] = int(value)
        return checked


class ExactSearcher(Searcher):
    """Exact search with the numba kernel; no faiss needed.

    Vectors are kept as float32 or, with ``dtype="float16"``, half the memory (scores then
    carry float16 rounding, about 1e-3). A loaded searcher memory-maps ``vectors.npy``, so it
    opens instantly and may be larger than RAM; ``add``/``remove`` then make an in-memory copy.
    """

    backend = "exact-numba"
    _defaults = {"dtype": "float32"}

    def __init__(self, dim: int, **options: Any) -> None:
        super().__init__(dim, **options)
        dtype = self.options["dtype"]
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"backend 'exact-numba': dtype must be float32 or float16, got {dtype!r}")
        self._dtype = np.dtype(dtype)
        self._storage = np.empty((0, self.dim), dtype=self._dtype)  # rows >= ntotal are spare capacity

    @property
    def _vectors(self) -> np.ndarray:
        return self._storage[: self.ntotal]

    def _dtype_name(self) -> str:
        return self._dtype.name

    def _add(self, vectors: np.ndarray) -> None:
        n, need = self.ntotal, self.ntotal + vectors.shape[0]
        if need > self._storage.shape[0] or isinstance(self._storage, np.memmap):
            # Grow geometrically so that many small adds cost amortised O(rows added).
            storage = np.empty((max(need, 2 * n), self.dim), dtype=self._dtype)
            storage[:n] = self._storage[:n]
            self._storage = storage
        self._storage[n:need] = vectors

    def _remove(self, positions: np.ndarray) -> None:
        self._storage = np.delete(self._vectors, positions, axis=0)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(queries, self._vectors, k)

    def _all_vectors(self) -> np.ndarray:
        return self._vectors

    def _save(self, folder: Path) -> list[str]:
        atomic_save_npy(folder / VECTORS_FILE, self._vectors)
        return [VECTORS_FILE]

    def _load_files(self, folder: Path, meta: dict) -> None:
        path = folder / VECTORS_FILE
        expected = (meta["count"], self.dim)
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                shape, fortran, dtype = (
                    np.lib.format.read_array_header_1_0(fh) if version == (1, 0) else np.lib.format.read_array_header_2_0(fh)
                )
                header_len = fh.tell()
        except (ValueError, OSError, EOFError) as err:
            raise IndexMismatchError(f"not a readable .npy file ({first_line(err)})", file=path) from None
        if tuple(shape) != expected or fortran or dtype != self._dtype:
            raise IndexMismatchError(
                f"holds a {'x'.join(map(str, shape))} {dtype} array, searcher.json says {expected[0]}x{expected[1]} {self._dtype}",
                file=path,
            )
        size = path.stat().st_size
        if size != header_len + math.prod(shape) * dtype.itemsize:
            raise IndexMismatchError(f"file is {size} bytes, expected {header_len + math.prod(shape) * dtype.itemsize}: truncated or corrupt", file=path)
        self._storage = np.load(path, mmap_mode="r") if meta["count"] else np.empty(expected, self._dtype)


class FaissSearcher(Searcher):
    """Shared part of the faiss backends: the faiss label of a vector is its row position."""

    def __init__(self, dim: int, **options: Any) -> None:
        super().__init__(dim, **options)
        self._faiss = _import_faiss(self.backend)
        self._index = self._new_index()

    def _new_index(self):
        raise NotImplementedError

    def _add(self, vectors: np.ndarray) -> None:
        self._index.add(vectors)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, labels = self._index_for(k).search(queries, k, params=self._search_params(k))
        return scores, self._rows_of(labels)

    def _search_params(self, k: int):
        """faiss SearchParameters built from ``self.options`` at each search, so that
        search-time options (nprobe, efSearch) can be changed between searches."""
        return None

    def _index_for(self, k: int):
        """The faiss index that runs a search for ``k`` results."""
        return self._index

    def _rows_of(self, labels: np.ndarray) -> np.ndarray:
        return labels  # labels are row positions, -1 where faiss found nothing

    def _all_vectors(self) -> np.ndarray:
        return self._index.reconstruct_n(0, self._index.ntotal)

    def _save(self, folder: Path) -> list[str]:
        atomic_write_with(folder / FAISS_FILE, lambda tmp: self._faiss.write_index(self._index, str(tmp)))
        return [FAISS_FILE]

    def _load_files(self, folder: Path, meta: dict) -> None:
        self._index = _read_faiss_index(self._faiss, folder / FAISS_FILE, meta["count"], self.dim)


class FaissFlatSearcher(FaissSearcher):
    """Exact search with faiss ``IndexFlatIP`` (BLAS sgemm in blocks + a heap)."""

    backend = "faiss-flat"

    def _new_index(self):
        return self._faiss.IndexFlatIP(self.dim)

    def _remove(self, positions: np.ndarray) -> None:
        # IndexFlat compacts its storage in order, so labels stay equal to row positions.
        self._index.remove_ids(positions)


class FaissHNSWSearcher(FaissSearcher):
    """Approximate search with an HNSW graph: fast queries, no training, no in-place delete
    (remove rebuilds the graph from the stored vectors). ``options["efSearch"]`` may be
    changed between searches; it is raised to k when smaller, or HNSW returns fewer than k."""

    backend = "faiss-hnsw"
    _defaults = {"M": 32, "efConstruction": 100, "efSearch": 128}

    def _new_index(self):
        index = self._faiss.IndexHNSWFlat(self.dim, self.options["M"], self._faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.options["efConstruction"]
        return index

    def _search_params(self, k: int):
        return self._faiss.SearchParametersHNSW(efSearch=max(self.options["efSearch"], k))

    def _remove(self, positions: np.ndarray) -> None:
        kept = np.delete(self._index.reconstruct_n(0, self._index.ntotal), positions, axis=0)
        self._index = self._new_index()
        self._index.add(kept)


class FaissIVFSearcher(FaissSearcher):
    """Approximate search with inverted lists: ``nlist`` k-means cells, ``nprobe`` of them
    scanned per query. Trained on the first ``add`` (nlist defaults to about 4*sqrt(n), at
    most n/39, the fewest points per cell faiss accepts without warning).

    ``options["nprobe"]`` may be changed between searches.

    Deleting in place keeps the other vectors' faiss labels, so labels are not row positions
    here: ``_labels[i]`` is the label of row i (increasing, saved as ``labels.npy``).
    """

    backend = "faiss-ivf"
    _defaults = {"nlist": None, "nprobe": 16}

    def __init__(self, dim: int, **options: Any) -> None:
        super().__init__(dim, **options)
        self._labels = np.empty(0, dtype=np.int64)

    def _new_index(self):
        return None  # made by the first add, which has the vectors to train on

    def _search_params(self, k: int):
        return self._faiss.SearchParametersIVF(nprobe=min(self.options["nprobe"], self._index.nlist))

    def _add(self, vectors: np.ndarray) -> None:
        if self._index is None:
            self._index = self._train(vectors)
        start = int(self._labels[-1]) + 1 if len(self._labels) else 0
        labels = np.arange(start, start + vectors.shape[0], dtype=np.int64)
        self._index.add_with_ids(vectors, labels)
        self._labels = np.concatenate([self._labels, labels])

    def _train(self, vectors: np.ndarray):
        n = vectors.shape[0]
        nlist = self.options["nlist"]
        if nlist is None:
            nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
            self.options["nlist"] = nlist
        elif n < nlist:
            raise ConfigError(f"backend 'faiss-ivf': the first add trains nlist={nlist} cells and needs at least that many vectors, got {n}")
        faiss = self._faiss
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        return index

    def _remove(self, positions: np.ndarray) -> None:
        self._index.remove_ids(self._labels[positions])
        self._labels = np.delete(self._labels, positions)

    def _rows_of(self, labels: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self._labels, labels)
        return np.where(labels >= 0, rows, -1)

    def _all_vectors(self) -> np.ndarray:
        index = self._faiss.clone_index(self._index)  # the direct map is a reconstruct-only structure: not saved
        index.make_direct_map()
        return index.reconstruct_batch(self._labels)

    def _save(self, folder: Path) -> list[str]:
        atomic_save_npy(folder / LABELS_FILE, self._labels)
        if self._index is None:  # never trained: nothing but the options to save
            return [LABELS_FILE]
        return [LABELS_FILE, *super()._save(folder)]

    def _load_files(self, folder: Path, meta: dict) -> None:
        path = folder / LABELS_FILE
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise IndexMismatchError(f"not a readable .npy file ({first_line(err)})", file=path) from None
        if labels.shape != (meta["count"],) or labels.dtype != np.int64 or np.any(np.diff(labels) <= 0):
            raise IndexMismatchError(f"label map does not match the {meta['count']} vectors of searcher.json", file=path)
        self._labels = labels
        if FAISS_FILE in meta.get("files", []):
            super()._load_files(folder, meta)
        elif meta["count"]:
            raise IndexMismatchError(f"searcher.json lists no {FAISS_FILE} for {meta['count']} vectors", file=folder / META_FILE)


class _GpuSearchMixin:
    """Search a GPU copy of the CPU index, stored in float16 (GpuClonerOptions.useFloat16:
    flat storage for faiss-gpu-flat, inverted lists for faiss-gpu-ivf). The CPU index stays
    the source of truth for add, remove and save; the GPU copy is remade after a change.
    Searches with k > GPU_MAX_K, which faiss rejects on the GPU, run on the CPU index.

    Not exercised by the test suite, which runs without a GPU."""

    _gpu_index = None
    _gpu_resources = None

    def _add(self, vectors: np.ndarray) -> None:
        self._gpu_index = None
        super()._add(vectors)

    def _remove(self, positions: np.ndarray) -> None:
        self._gpu_index = None
        super()._remove(positions)

    def _load_files(self, folder: Path, meta: dict) -> None:
        self._gpu_index = None
        super()._load_files(folder, meta)

    def _index_for(self, k: int):
        if k > GPU_MAX_K:
            log.info("k=%d is above faiss's GPU limit of %d: searching on the CPU", k, GPU_MAX_K)
            return self._index
        if self._gpu_index is None:
            faiss = self._faiss
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            options = faiss.GpuClonerOptions()
            options.useFloat16 = True
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index, options)
        return self._gpu_index


class FaissGpuFlatSearcher(_GpuSearchMixin, FaissFlatSearcher):
    backend = "faiss-gpu-flat"


class FaissGpuIVFSearcher(_GpuSearchMixin, FaissIVFSearcher):
    backend = "faiss-gpu-ivf"


_BACKENDS: dict[str, type[Searcher]] = {
    cls.backend: cls
    for cls in (ExactSearcher, FaissFlatSearcher, FaissIVFSearcher, FaissHNSWSearcher, FaissGpuFlatSearcher, FaissGpuIVFSearcher)
}
_CPU_EQUIVALENT = {"faiss-gpu-flat": "faiss-flat", "faiss-gpu-ivf": "faiss-ivf"}
# The names configs accept (a Literal, so pydantic validates them); kept equal to the classes above.
BackendName = Literal["auto", "exact-numba", "faiss-flat", "faiss-ivf", "faiss-hnsw", "faiss-gpu-flat", "faiss-gpu-ivf"]
BACKENDS = get_args(BackendName)
assert set(BACKENDS) == {"auto", *_BACKENDS}, "BackendName out of step with the searcher classes"


def make_searcher(backend: str = "auto", *, dim: int, **options: Any) -> Searcher:
    """A new, empty searcher. ``options`` are the backend's (see the classes); unknown ones are
    a :class:`ConfigError`."""
    backend = check_backend(backend)
    return _BACKENDS[backend](dim, **options)


def check_backend(backend: str) -> str:
    """The concrete backend ``backend`` names on this machine; a :class:`ConfigError` when it is
    unknown or needs a GPU that is not there (callers check before encoding anything)."""
    if backend == "auto":
        backend = _auto_backend()
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown search backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend in _CPU_EQUIVALENT and _gpu_count() == 0:
        raise ConfigError(f"backend {backend!r} needs a GPU that faiss can use; none found (use {_CPU_EQUIVALENT[backend]!r})")
    return backend


def _auto_backend() -> str:
    try:
        import faiss  # noqa: F401
    except ImportError:
        log.info("search backend: exact-numba (faiss is not installed)")
        return "exact-numba"
    if _gpu_count() > 0:
        log.info("search backend: faiss-gpu-flat (faiss sees %d GPU(s))", _gpu_count())
        return "faiss-gpu-flat"
    log.info("search backend: faiss-flat (faiss on CPU, no GPU)")
    return "faiss-flat"


def _gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus()


def _import_faiss(backend: str):
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"backend {backend!r} needs the faiss package (pip install faiss-cpu), or use 'exact-numba'") from None
    return faiss


def load_searcher(folder: str | os.PathLike) -> Searcher:
    """Reopen a folder written by :meth:`Searcher.save`.

    Every file is checked (present, parseable, the size ``searcher.json`` promises); any
    problem is an :class:`IndexMismatchError` naming the file. A GPU searcher saved on a
    machine with a GPU opens as its CPU equivalent where there is none.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise IndexMismatchError("not a searcher description (expected a JSON object)", file=meta_path)
    backend, dim, count = meta.get("backend"), meta.get("dim"), meta.get("count")
    if backend not in _BACKENDS:
        raise IndexMismatchError(f"unknown search backend {backend!r}", file=meta_path)
    if not isinstance(dim, int) or dim < 1 or not isinstance(count, int) or count < 0:
        raise IndexMismatchError(f"bad dim {dim!r} or count {count!r}", file=meta_path)
    files = meta.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise IndexMismatchError("bad 'files' list", file=meta_path)
    for name in files:
        if not (folder / name).is_file():
            raise IndexMismatchError("file listed in searcher.json is missing", file=folder / name)
    if backend in _CPU_EQUIVALENT and _gpu_count() == 0:
        log.warning("search index was built for %s but faiss sees no GPU here: searching with %s", backend, _CPU_EQUIVALENT[backend])
        backend = _CPU_EQUIVALENT[backend]
    try:
        searcher = _BACKENDS[backend](dim, **(meta.get("options") or {}))
    except ConfigError as err:
        raise IndexMismatchError(f"bad options ({err})", file=meta_path) from None
    if searcher._dtype_name() != meta.get("dtype"):
        raise IndexMismatchError(f"dtype {meta.get('dtype')!r} does not match backend options", file=meta_path)
    ids_path = folder / IDS_FILE
    ids = _read_json(ids_path)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        raise IndexMismatchError("id map must be a list of distinct strings", file=ids_path)
    if len(ids) != count:
        raise IndexMismatchError(f"id map holds {len(ids)} ids, searcher.json says {count}", file=ids_path)
    searcher._load_files(folder, meta)
    searcher._ids = ids
    return searcher


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexMismatchError("file is missing", file=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexMismatchError(f"cannot read JSON ({first_line(err)})", file=path) from None


def _read_faiss_index(faiss, path: Path, count: int, dim: int):
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise IndexMismatchError(f"faiss cannot read the index ({first_line(err)})", file=path) from None
    if index.ntotal != count or index.d != dim:
        raise IndexMismatchError(f"holds {index.ntotal} vectors of dimension {index.d}, searcher.json says {count} of {dim}", file=path)
    return index


__all__ = ["BACKENDS", "BackendName", "Searcher", "exact_search", "load_searcher", "make_searcher"]
