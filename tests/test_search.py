"""The search layer: the numba top-k kernel against a float64 numpy reference (hypothesis),
every CPU backend's add / search / remove / save / load, float16 memory maps, and clear errors
for empty indexes, bad k, wrong dimensions and damaged files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedtune import search
from embedtune.errors import ConfigError, EmbedtuneError, IndexMismatchError, InputError
from embedtune.search import exact_search, load_searcher, make_searcher

CPU_BACKENDS = [
    ("exact-numba", {}),
    ("exact-numba", {"dtype": "float16"}),
    ("faiss-flat", {}),
    ("faiss-ivf", {"nlist": 4, "nprobe": 4}),  # nprobe = nlist: every list scanned, exact
    ("faiss-hnsw", {"M": 8, "efSearch": 64}),
]


def reference_topk(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores, best first, ties by row index (a stable sort)."""
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def assert_same_topk(queries, docs, k, got_scores, got_idx, tol=1e-4):
    """Equal to the reference up to ties: same shape, scores, and each returned row really has
    the score reported and belongs to the top k."""
    k = min(k, docs.shape[0])
    ref_scores, ref_idx = reference_topk(queries, docs, k)
    assert got_scores.shape == got_idx.shape == (queries.shape[0], k)
    assert got_scores.dtype == np.float32 and got_idx.dtype == np.int64
    np.testing.assert_allclose(got_scores, ref_scores, rtol=0, atol=tol)
    full = queries.astype(np.float64) @ docs.astype(np.float64).T
    for q in range(queries.shape[0]):
        row = got_idx[q]
        assert len(set(row.tolist())) == k and row.min() >= 0 and row.max() < docs.shape[0]
        np.testing.assert_allclose(full[q, row], ref_scores[q], rtol=0, atol=tol)
    return ref_idx


@contextmanager
def small_tiles(query_block, doc_block, chunk_rows, min_queries):
    """Shrink the kernel's tiles so that tiny inputs still cross tile, chunk and split edges."""
    with mock.patch.multiple(
        search, QUERY_BLOCK=query_block, DOC_BLOCK=doc_block, CHUNK_BYTES=4 * chunk_rows, MIN_QUERIES_PER_THREAD=min_queries
    ):
        yield


tiles = st.tuples(st.sampled_from([1, 3, 8, 64]), st.sampled_from([1, 5, 16, 1024]), st.sampled_from([1, 7, 40, 4096]), st.sampled_from([1, 4, 64]))


@st.composite
def search_problem(draw):
    n = draw(st.integers(1, 120))
    q = draw(st.integers(1, 20))
    d = draw(st.integers(1, 12))
    k = draw(st.integers(1, n + 5))  # k > n must give n results
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        # small integers: float32 products are exact, so ties are real ties
        docs = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
        queries = rng.integers(-3, 4, size=(q, d)).astype(np.float32)
    else:
        docs = rng.standard_normal((n, d)).astype(np.float32)
        queries = rng.standard_normal((q, d)).astype(np.float32)
    if draw(st.booleans()) and n > 1:  # duplicated documents
        docs[rng.integers(0, n, size=n // 2)] = docs[rng.integers(0, n, size=n // 2)]
    if draw(st.booleans()):  # all scores negative
        docs = np.abs(docs) + 1
        queries = -np.abs(queries) - 1
    return queries, docs, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=search_problem(), tile=tiles)
def test_exact_search_matches_float64_reference(problem, tile):
    queries, docs, k = problem
    with small_tiles(*tile):
        scores, idx = exact_search(queries, docs, k)
    ref_idx = assert_same_topk(queries, docs, k, scores, idx)
    if np.array_equal(np.round(docs), docs) and np.array_equal(np.round(queries), queries):
        np.testing.assert_array_equal(idx, ref_idx)  # exact ties resolve to the lower row
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_search_default_tiles_many_queries():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    scores, idx = exact_search(queries, docs, 50)
    assert_same_topk(queries, docs, 50, scores, idx)
    scores, idx = exact_search(queries[:1], docs, 5000)
    assert scores.shape == (1, 3000)
    assert_same_topk(queries[:1], docs, 3000, scores, idx)


def test_exact_search_float16_memmap(tmp_path):
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((700, 24)).astype(np.float16)
    np.save(tmp_path / "docs.npy", docs)
    mapped = np.load(tmp_path / "docs.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    queries = rng.standard_normal((5, 24)).astype(np.float32)
    with small_tiles(8, 16, 100, 64):
        scores, idx = exact_search(queries, mapped, 10)
    assert_same_topk(queries, docs.astype(np.float32), 10, scores, idx)


def test_exact_search_float32_memmap(tmp_path):
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((500, 16)).astype(np.float32)
    np.save(tmp_path / "docs.npy", docs)
    queries = rng.standard_normal((130, 16)).astype(np.float32)
    scores, idx = exact_search(queries, np.load(tmp_path / "docs.npy", mmap_mode="r"), 7)
    assert_same_topk(queries, docs, 7, scores, idx)


def test_exact_search_other_dtypes_and_layouts():
    rng = np.random.default_rng(3)
    docs = rng.standard_normal((300, 10))
    queries = rng.standard_normal((4, 10))
    for variant in (docs, np.asfortranarray(docs.astype(np.float32)), docs.astype(np.float32)[::2], docs.astype(">f4")):
        scores, idx = exact_search(queries, variant, 6)
        assert_same_topk(queries, np.asarray(variant, dtype=np.float64), 6, scores, idx)


def test_exact_search_errors():
    docs = np.ones((4, 3), np.float32)
    with pytest.raises(IndexMismatchError, match="empty"):
        exact_search(np.ones((1, 3)), np.empty((0, 3), np.float32), 1)
    with pytest.raises(ConfigError, match="k must be"):
        exact_search(np.ones((1, 3)), docs, 0)
    with pytest.raises(IndexMismatchError, match="dimension 2 but the index has dimension 3"):
        exact_search(np.ones((1, 2)), docs, 1)
    with pytest.raises(InputError, match="NaN"):
        exact_search(np.array([[np.nan, 0, 0]]), docs, 1)
    with pytest.raises(InputError, match="2-d"):
        exact_search(np.ones(3), docs, 1)
    assert exact_search(np.empty((0, 3)), docs, 2)[0].shape == (0, 2)


# --------------------------------------------------------------------------- searchers


def unit_vectors(n, d, seed):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("backend,options", CPU_BACKENDS, ids=lambda x: x if isinstance(x, str) else ",".join(map(str, x.values())))
def test_backend_round_trip(tmp_path, backend, options):
    d = 16
    vectors = unit_vectors(200, d, seed=3)
    ids = [f"doc{i}" for i in range(200)]
    s = make_searcher(backend, dim=d, **options)
    assert s.backend == backend and s.dim == d and s.ntotal == 0
    s.add(ids[:150], vectors[:150])
    s.add(ids[150:], vectors[150:])
    assert s.ntotal == len(s) == 200

    scores, found = s.search(vectors[:10], 3)
    assert scores.shape == (10, 3) and scores.dtype == np.float32
    assert [row[0] for row in found] == ids[:10]  # each vector finds itself first
    assert np.all(np.diff(scores, axis=1) <= 0)

    s.remove(ids[:5] + ["doc199"])
    assert s.ntotal == 194 and s.ids[0] == "doc5"
    scores, found = s.search(vectors[:10], 5)
    for row in found:
        assert not set(row) & {*ids[:5], "doc199"}
    assert [row[0] for row in found[5:]] == ids[5:10]

    s.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "searcher.json").read_text())
    assert meta["backend"] == backend and meta["count"] == 194 and meta["dim"] == d
    loaded = load_searcher(tmp_path / "s")
    assert type(loaded) is type(s) and loaded.ntotal == 194 and loaded.ids == s.ids
    scores2, found2 = loaded.search(vectors[:10], 5)
    assert found2 == found
    np.testing.assert_allclose(scores2, scores, atol=1e-6)

    # k above the count returns everything; updates after loading keep working
    scores3, found3 = loaded.search(vectors[:2], 1000)
    assert scores3.shape == (2, 194) and all(len(row) == 194 for row in found3)
    loaded.remove(["doc5"])
    loaded.add(["new"], vectors[5:6])
    assert loaded.search(vectors[5:6], 1)[1] == [["new"]]
    loaded.save(tmp_path / "s")  # overwrite the folder it was loaded from (memory-mapped)
    assert load_searcher(tmp_path / "s").search(vectors[5:6], 1)[1] == [["new"]]


def test_exact_searcher_matches_faiss_flat():
    vectors = unit_vectors(300, 32, seed=4)
    queries = unit_vectors(20, 32, seed=5)
    ids = [str(i) for i in range(300)]
    results = []
    for backend in ("exact-numba", "faiss-flat"):
        s = make_searcher(backend, dim=32)
        s.add(ids, vectors)
        results.append(s.search(queries, 10))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    assert results[0][1] == results[1][1]


def test_exact_searcher_float16_is_memory_mapped(tmp_path):
    s = make_searcher("exact-numba", dim=8, dtype="float16")
    s.add(["a", "b"], np.eye(2, 8, dtype=np.float32))
    s.save(tmp_path / "s")
    assert np.load(tmp_path / "s" / "vectors.npy").dtype == np.float16
    loaded = load_searcher(tmp_path / "s")
    assert isinstance(loaded._storage, np.memmap)
    assert loaded.search(np.eye(2, 8), 1)[1] == [["a"], ["b"]]


def test_searcher_errors():
    s = make_searcher("exact-numba", dim=4)
    with pytest.raises(IndexMismatchError, match="empty"):
        s.search(np.ones((1, 4)), 1)
    s.add(["a", "b"], np.eye(2, 4))
    with pytest.raises(ConfigError, match="k must be"):
        s.search(np.ones((1, 4)), 0)
    with pytest.raises(IndexMismatchError, match="dimension 3"):
        s.search(np.ones((1, 3)), 1)
    with pytest.raises(IndexMismatchError, match="dimension 5"):
        s.add(["c"], np.ones((1, 5)))
    with pytest.raises(InputError, match="already in the index"):
        s.add(["a"], np.ones((1, 4)))
    with pytest.raises(InputError, match="duplicate ids"):
        s.add(["c", "c"], np.ones((2, 4)))
    with pytest.raises(InputError, match="2 ids for 1 vectors"):
        s.add(["c", "d"], np.ones((1, 4)))
    with pytest.raises(InputError, match="NaN"):
        s.add(["c"], np.full((1, 4), np.inf))
    with pytest.raises(IndexMismatchError, match="not in the index"):
        s.remove(["zzz"])
    assert s.ntotal == 2  # failed calls changed nothing
    with pytest.raises(ConfigError, match="unknown search backend"):
        make_searcher("annoy", dim=4)
    with pytest.raises(ConfigError, match="no option 'nprobe'"):
        make_searcher("faiss-flat", dim=4, nprobe=3)
    with pytest.raises(ConfigError, match="float32 or float16"):
        make_searcher("exact-numba", dim=4, dtype="int8")
    with pytest.raises(ConfigError, match="needs at least"):
        make_searcher("faiss-ivf", dim=4, nlist=10).add(["a"], np.ones((1, 4)))
    with pytest.raises(ConfigError, match="needs a GPU"):
        make_searcher("faiss-gpu-flat", dim=4)


def test_ivf_default_nlist_and_remove_everything(tmp_path):
    s = make_searcher("faiss-ivf", dim=8)
    vectors = unit_vectors(400, 8, seed=6)
    s.add([str(i) for i in range(400)], vectors)
    assert s.options["nlist"] == 10  # min(4 * sqrt(400), 400 // 39)
    s.remove([str(i) for i in range(400)])
    assert s.ntotal == 0
    s.add(["x"], vectors[:1])
    assert s.search(vectors[:1], 5)[1] == [["x"]]


def test_approximate_backend_may_return_fewer():
    s = make_searcher("faiss-ivf", dim=8, nlist=8, nprobe=1)
    vectors = unit_vectors(320, 8, seed=7)
    s.add([str(i) for i in range(320)], vectors)
    scores, found = s.search(vectors[:4], 320)
    # nprobe 1 of 8 lists: each query sees about a list's worth of vectors, not all 320
    assert all(0 < len(found_row) < 320 for found_row in found)
    for i, (row, found_row) in enumerate(zip(scores, found)):
        assert found_row[0] == str(i)  # the vector itself, in its own list, comes first
        assert np.all(np.diff(row[: len(found_row)]) <= 1e-6) and np.all(np.isneginf(row[len(found_row):]))


def test_auto_backend_logs_its_choice(caplog):
    with caplog.at_level(logging.INFO, logger="embedtune"):
        s = make_searcher("auto", dim=4)
    assert s.backend == "faiss-flat"  # faiss-cpu installed, no GPU
    assert "search backend: faiss-flat" in caplog.text


def test_auto_backend_without_faiss(caplog, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # import faiss -> ImportError
    with caplog.at_level(logging.INFO, logger="embedtune"):
        s = make_searcher("auto", dim=4)
    assert s.backend == "exact-numba" and "faiss is not installed" in caplog.text
    with pytest.raises(ConfigError, match="needs the faiss package"):
        make_searcher("faiss-flat", dim=4)


# --------------------------------------------------------------------------- damaged files


def saved(tmp_path, backend, **options):
    s = make_searcher(backend, dim=8, **options)
    s.add([f"d{i}" for i in range(100)], unit_vectors(100, 8, seed=8))
    return s.save(tmp_path / backend)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def damage_cases():
    return [
        ("exact-numba", "vectors.npy", lambda p: truncate(p), "truncated or corrupt"),
        ("exact-numba", "vectors.npy", lambda p: p.write_bytes(b"garbage" * 100), "not a readable .npy"),
        ("exact-numba", "vectors.npy", lambda p: np.save(p, np.zeros((100, 4), np.float32)), "holds a 100x4"),
        ("exact-numba", "vectors.npy", lambda p: p.unlink(), "missing"),
        ("faiss-flat", "index.faiss", lambda p: truncate(p), "faiss cannot read"),
        ("faiss-flat", "index.faiss", lambda p: p.write_bytes(b"\0" * 64), "faiss cannot read"),
        ("faiss-hnsw", "index.faiss", lambda p: truncate(p, 0.9), "faiss cannot read"),
        ("faiss-ivf", "labels.npy", lambda p: truncate(p, 0.6), "label map|not a readable"),
        ("faiss-ivf", "index.faiss", lambda p: truncate(p, 0.8), "faiss cannot read"),
        ("faiss-flat", "ids.json", lambda p: p.write_text('["a", "b"]'), "holds 2 ids"),
        ("faiss-flat", "ids.json", lambda p: p.write_text("[1, 2"), "cannot read JSON"),
        ("faiss-flat", "ids.json", lambda p: p.unlink(), "missing"),
        ("faiss-flat", "searcher.json", lambda p: p.write_text("{}"), "unknown search backend"),
        ("faiss-flat", "searcher.json", lambda p: p.unlink(), "missing"),
        ("faiss-flat", "searcher.json", lambda p: p.write_text(p.read_text().replace('"count": 100', '"count": 99')), "ids"),
    ]


@pytest.mark.parametrize("backend,victim,damage,message", damage_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_damaged_files_raise_index_mismatch(tmp_path, backend, victim, damage, message):
    folder = saved(tmp_path, backend)
    damage(folder / victim)
    with pytest.raises(IndexMismatchError, match=message) as err:
        load_searcher(folder)
    assert victim in str(err.value)  # the message names the file
    assert err.value.exit_code == 6 and isinstance(err.value, EmbedtuneError)
    assert "\n" not in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(IndexMismatchError, match="searcher.json: file is missing"):
        load_searcher(tmp_path / "nothing")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_search_over_memmap_does_not_copy_it_into_ram(tmp_path):
    """eval/bench_load.py at a small scale: one search of 2,000 queries over 200,000 float16
    vectors memory-mapped from disk, measured in a fresh process. The search may map the file's
    pages in (page cache), but what it allocates itself must stay far below the file's size:
    a copy of the vectors into RAM (or anything N x Q) would be at least 146 MB here."""
    script = Path(__file__).resolve().parents[1] / "eval" / "bench_load.py"
    cmd = [sys.executable, str(script), "--n", "200000", "--queries", "2000", "--dtype", "float16",
           "--tmp-dir", str(tmp_path), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["correct"] and result["checked_queries"] == 5
    file_mb = result["file_mb"]
    assert file_mb > 140
    assert result["extra_anon_mb"] < file_mb / 4, result
    # Everything resident at the peak: at most the mapped file plus that small allocation.
    assert result["extra_rss_mb"] < file_mb + 40, result
    assert result["within_2gb"]
    assert list(tmp_path.iterdir()) == []  # the temporary corpus was removed
