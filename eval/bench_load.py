"""Load check: one search call of 10,000 queries over 1,000,000 memory-mapped vectors.

The hardening issue asks that the search API handle 10,000 queries in one call against a
corpus of 1,000,000 vectors kept on disk, with at most 2 GB of extra RAM, and that the peak
RSS be reported. This script:

1. writes N x d L2-normalised vectors (seeded, float16 by default) straight into a .npy file
   with ``numpy.lib.format.open_memmap``, a chunk at a time, plus the ``ids.json`` and
   ``searcher.json`` that make the folder an exact-numba searcher (the layout an index folder
   holds for on-disk vectors), so the whole matrix is never in RAM;
2. starts a fresh child process (so that nothing the parent allocated counts), which imports
   embedtune, opens the folder with ``load_searcher`` (the vectors stay memory-mapped), runs
   a tiny search on the same memory map to compile / load the numba kernel, records the RSS
   (the baseline), resets the kernel's peak-RSS mark, then times ONE ``Searcher.search`` of Q
   random normalised queries with top-k, and records the peak;
3. checks a few of the results against a float64 numpy brute force over a block-wise scan.

What the figures mean (all from /proc/self/status of the child):

- ``peak_rss_mb``: VmHWM during the search call (reset just before it via
  ``/proc/self/clear_refs``), i.e. everything resident at the peak. It includes the pages of
  the memory-mapped vectors file that the scan touched: those are page cache mapped into the
  process (RssFile), which the kernel may drop at any time, not memory the process allocated.
- ``extra_rss_mb`` = peak_rss_mb - baseline_rss_mb; ``within_2gb`` compares this (the
  stricter figure, mapped file pages included) with 2048 MB.
- ``extra_anon_mb``: the peak of anonymous memory (RssAnon, polled every few ms while the
  search runs) minus its baseline: what the search call itself allocated. A copy of the
  memory map into RAM, or anything of size N x Q, would show up here.
- ``extra_file_mb``: file-backed pages mapped in during the search (RssFile + RssShmem
  after minus before): the part of ``extra_rss_mb`` that is the memory-mapped vectors.
- ``ru_maxrss_mb``: the child's lifetime peak from getrusage, read right after the search
  (loading the 1M ids and compiling the kernel included).

    python eval/bench_load.py --json                      # 1M x 384 float16, 10k queries, k=10
    python eval/bench_load.py --n 200000 --queries 2000   # smaller and quicker
    python eval/bench_load.py --dtype float32 --keep-file

The last stdout line with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1 << 20
LIMIT_MB = 2048  # the budget of extra RAM for one search call
WRITE_ROWS = 65536  # rows generated and written per chunk
CHECK_QUERIES = 5  # queries checked against the float64 brute force
CHECK_ROWS = 32768  # rows per block of the brute-force scan
CHECK_TOL = 1e-4  # float32 accumulation error of a 384-term dot product is about 1e-6
POLL_SECONDS = 0.002


# --------------------------------------------------------------------------- the corpus


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_corpus(folder: Path, n: int, dim: int, dtype: str, seed: int) -> Path:
    """Write an exact-numba searcher folder of ``n`` random unit vectors, a chunk at a time."""
    from embedtune import search
    from embedtune.io import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vectors = np.lib.format.open_memmap(folder / search.VECTORS_FILE, mode="w+", dtype=np.dtype(dtype), shape=(n, dim))
    for start in range(0, n, WRITE_ROWS):
        stop = min(n, start + WRITE_ROWS)
        vectors[start:stop] = unit_rows(rng, stop - start, dim)
    vectors.flush()
    del vectors  # unmap before anyone reads the file
    # Row i is id "d<i>", so the check can map ids back to rows without a dictionary.
    atomic_write_json(folder / search.IDS_FILE, [f"d{i}" for i in range(n)])
    meta = {
        "format_version": search.FORMAT_VERSION,
        "backend": "exact-numba",
        "dim": dim,
        "count": n,
        "dtype": dtype,
        "options": {"dtype": dtype},
        "files": [search.IDS_FILE, search.VECTORS_FILE],
    }
    atomic_write_json(folder / search.META_FILE, meta)  # last: the folder is complete
    return folder


# --------------------------------------------------------------------------- memory readings


def proc_status() -> dict[str, int]:
    """The kB fields of /proc/self/status, in bytes (empty where there is no /proc)."""
    fields = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return fields


def file_pages(status: dict[str, int]) -> int:
    """Resident file-backed pages (a file on tmpfs counts as shared memory)."""
    return status.get("RssFile", 0) + status.get("RssShmem", 0)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so it measures from here on."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Poller:
    """Highest VmRSS and RssAnon seen while running: a thread reads /proc/self/status every
    few ms. The numba kernel releases the GIL, so the thread keeps sampling during it."""

    def __init__(self) -> None:
        self.max_rss = self.max_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        status = proc_status()
        self.max_rss = max(self.max_rss, status.get("VmRSS", 0))
        self.max_anon = max(self.max_anon, status.get("RssAnon", 0))

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._sample()

    def __enter__(self) -> "Poller":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------- the child


def brute_force_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 top-k (scores, rows) by a block-wise scan of the memory map, best first."""
    q = queries.astype(np.float64)
    best_scores = np.full((len(q), 0), -np.inf)
    best_rows = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, vectors.shape[0], CHECK_ROWS):
        block = np.asarray(vectors[start : start + CHECK_ROWS], dtype=np.float64)
        scores = np.concatenate([best_scores, q @ block.T], axis=1)
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(block)), (len(q), len(block)))], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return best_scores, best_rows


def check_results(vectors: np.ndarray, queries: np.ndarray, scores: np.ndarray, found: list[list[str]], k: int) -> dict:
    """Compare the first few queries with the brute force, up to ties: the scores must match,
    and each returned row must really have its rank's score."""
    picked = range(min(CHECK_QUERIES, len(queries)))
    ref_scores, _ = brute_force_topk(vectors, queries[list(picked)], k)
    worst = 0.0
    ok = True
    for q in picked:
        rows = [int(pid[1:]) for pid in found[q]]
        true = np.asarray(vectors[rows], dtype=np.float64) @ queries[q].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(scores[q] - ref_scores[q]))), float(np.max(np.abs(true - ref_scores[q]))))
        ok &= len(rows) == k and len(set(rows)) == k
    ok &= worst <= CHECK_TOL
    return {"checked_queries": len(picked), "max_score_error": worst, "correct": bool(ok)}


def child_main(folder: Path, n_queries: int, k: int, seed: int) -> dict:
    """Runs in a fresh process: load, warm up, one measured search, check. Returns figures."""
    status0 = proc_status()
    import numba

    from embedtune.search import exact_search, load_searcher

    searcher = load_searcher(folder)
    vectors = searcher._storage  # the memory map load_searcher opened
    status_load = proc_status()
    assert isinstance(vectors, np.memmap), "load_searcher did not memory-map the vectors"

    queries = unit_rows(np.random.default_rng(seed + 1), n_queries, searcher.dim)
    # Compile (or load from numba's cache) the kernel for this dtype on a small slice of the
    # same memory map: a once-per-process cost that does not grow with N or Q.
    exact_search(queries[:2], vectors[:4096], k)
    status_base = proc_status()

    peak_reset = reset_peak_rss()
    with Poller() as poll:
        t0 = time.perf_counter()
        scores, found = searcher.search(queries, k)
        seconds = time.perf_counter() - t0
    status_end = proc_status()
    peak_rss = status_end.get("VmHWM", 0) if peak_reset else poll.max_rss
    peak_rss = max(peak_rss, poll.max_rss)

    max_rss_lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    checks = check_results(vectors, queries, scores, found, k)
    base_rss, base_anon = status_base.get("VmRSS", 0), status_base.get("RssAnon", 0)
    return {
        "rss_before_import_mb": status0.get("VmRSS", 0) / MB,
        "rss_after_load_mb": status_load.get("VmRSS", 0) / MB,
        "baseline_rss_mb": base_rss / MB,
        "peak_rss_mb": peak_rss / MB,
        "extra_rss_mb": (peak_rss - base_rss) / MB,
        "baseline_anon_mb": base_anon / MB,
        "peak_anon_mb": poll.max_anon / MB,
        "extra_anon_mb": (poll.max_anon - base_anon) / MB,
        # Pages of the vectors file mapped in by the scan (shared libraries are in the baseline).
        "extra_file_mb": (file_pages(status_end) - file_pages(status_base)) / MB,
        "ru_maxrss_mb": max_rss_lifetime / MB,
        "peak_source": "VmHWM" if peak_reset else "polled VmRSS",
        "seconds": seconds,
        "queries_per_second": n_queries / seconds,
        "numba_threads": numba.get_num_threads(),
        **checks,
    }


# --------------------------------------------------------------------------- the parent


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="embedtune-load-", dir=args.tmp_dir))
    folder = root / "searcher"
    try:
        t0 = time.perf_counter()
        write_corpus(folder, args.n, args.dim, args.dtype, args.seed)
        write_seconds = time.perf_counter() - t0
        file_mb = (folder / "vectors.npy").stat().st_size / MB
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder),
               "--queries", str(args.queries), "--k", str(args.k), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"measuring child failed with exit code {proc.returncode}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if args.keep_file:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "vectors": args.n,
        "queries": args.queries,
        "dim": args.dim,
        "dtype": args.dtype,
        "k": args.k,
        "file_mb": file_mb,
        "write_seconds": write_seconds,
        **figures,
        "limit_mb": LIMIT_MB,
        "within_2gb": figures["extra_rss_mb"] <= LIMIT_MB,
        "kept": str(folder) if args.keep_file else None,
    }


def summary(r: dict) -> str:
    return "\n".join([
        f"corpus: {r['vectors']:,} x {r['dim']} {r['dtype']} memory-mapped ({r['file_mb']:.0f} MB file, written in {r['write_seconds']:.1f} s)",
        f"one search call: {r['queries']:,} queries, k={r['k']}: {r['seconds']:.1f} s ({r['queries_per_second']:.0f} queries/s)",
        f"RSS: before import {r['rss_before_import_mb']:.0f} MB, after import+load {r['rss_after_load_mb']:.0f} MB, "
        f"baseline (kernel ready) {r['baseline_rss_mb']:.0f} MB, peak during search {r['peak_rss_mb']:.0f} MB ({r['peak_source']})",
        f"extra RSS during search: {r['extra_rss_mb']:.0f} MB (of which {r['extra_file_mb']:.0f} MB are pages of the mapped vectors file); "
        f"extra anonymous memory: {r['extra_anon_mb']:.1f} MB",
        f"within 2 GB: {'yes' if r['within_2gb'] else 'NO'}; "
        f"correct on {r['checked_queries']} queries vs float64: {'yes' if r['correct'] else 'NO'} (max score error {r['max_score_error']:.1e})",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="corpus vectors (default 1,000,000)")
    p.add_argument("--queries", type=int, default=10_000, help="queries in the one search call (default 10,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp-dir", default=None, help="where the temporary corpus folder goes (default: the system's)")
    p.add_argument("--keep-file", action="store_true", help="keep the corpus folder and print its path")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: measure this folder
    args = p.parse_args(argv)
    if args.n < 1 or args.queries < 1 or args.dim < 1 or args.k < 1:
        p.error("--n, --queries, --dim and --k must be >= 1")

    if args.child is not None:
        print(json.dumps(child_main(args.child, args.queries, args.k, args.seed)))
        return 0
    result = run(args)
    print(summary(result))
    if args.json:
        print(json.dumps(result))
    return 0 if result["within_2gb"] and result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
