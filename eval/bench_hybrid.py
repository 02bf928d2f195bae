"""Benchmark: what hybrid search (BM25 fused with the dense ranking) costs against dense-only search.

Two parts, each dense vs hybrid interleaved in one process (the ratio is what counts here):

- ``--index DIR --queries BEIR``: a real hybrid index (``embedtune index build --hybrid``) and a
  BEIR split's queries, through ``embedtune.index.query_index`` exactly as ``search`` runs it:
  single-query latency (p50 / p95, with and without query encoding) and batch throughput.
- ``--synthetic N``: N passages (default 1,000,000) of random unit float16 vectors in the exact
  numba searcher and random Zipf-distributed texts in BM25, searched with random vectors and
  4-word queries through ``embedtune.index.ranked_search`` (search only, no encoding).

    python eval/bench_hybrid.py --index runs/scifact/index --queries ../shared/datasets/scifact --json
    python eval/bench_hybrid.py --synthetic 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


def bench_index(index_dir: str, beir: str, split: str, k: int, single: int) -> dict:
    from embedtune.corpus import load_beir
    from embedtune.index import open_index, query_index

    index = open_index(index_dir)
    if index.lexical is None:
        sys.exit(f"{index_dir}: no BM25 part; build it with 'embedtune index build --hybrid'")
    ds = load_beir(beir, split)
    queries = [ds.queries[q] for q in ds.qrels if q in ds.queries]
    query_index(index, queries[:4], k, hybrid=True)  # warm-up: numba, BM25 pages, model
    out: dict = {"index": index_dir, "passages": index.count, "queries": len(queries), "k": k}
    lat = {"dense": [], "hybrid": []}
    search = {"dense": [], "hybrid": []}
    for q in queries[:single]:
        for mode in ("dense", "hybrid"):
            t0 = time.perf_counter()
            query_index(index, [q], k, hybrid=mode == "hybrid", with_text=False)
            lat[mode].append(time.perf_counter() - t0)
            search[mode].append(index.last_timings["search_s"])
    for mode in ("dense", "hybrid"):
        out[f"single_{mode}"] = {**_pct(lat[mode]), "search_only": _pct(search[mode])}
    best = {"dense": 0.0, "hybrid": 0.0}
    for _ in range(3):
        for mode in ("dense", "hybrid"):
            t0 = time.perf_counter()
            query_index(index, queries, k, hybrid=mode == "hybrid", with_text=False)
            best[mode] = max(best[mode], len(queries) / (time.perf_counter() - t0))
    out["batch_queries_per_s"] = {m: round(v, 1) for m, v in best.items()}
    out["p50_ratio_hybrid_over_dense"] = round(out["single_hybrid"]["p50_ms"] / out["single_dense"]["p50_ms"], 3)
    out["batch_throughput_ratio_hybrid_over_dense"] = round(best["hybrid"] / best["dense"], 3)
    return out


def bench_synthetic(n: int, dim: int, k: int, n_queries: int, seed: int = 0) -> dict:
    from embedtune.fusion import FusionConfig
    from embedtune.index import ranked_search
    from embedtune.lexical import bm25_index
    from embedtune.search import make_searcher

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    searcher = make_searcher("exact-numba", dim=dim, dtype="float16")
    ids = [f"p{i}" for i in range(n)]
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        searcher.add(ids[start:start + len(block)], block)
    t_vectors = time.perf_counter() - t0
    vocab = np.array([f"w{i}" for i in range(30_000)])
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks**1.07
    p /= p.sum()
    words = vocab[rng.choice(len(vocab), size=(n, 40), p=p)]
    texts = [" ".join(row) for row in words]
    del words
    t1 = time.perf_counter()
    lexical = bm25_index(texts)
    t_bm25 = time.perf_counter() - t1
    qtexts = [" ".join(vocab[rng.choice(len(vocab), size=4, p=p)]) for _ in range(n_queries)]
    qvec = rng.standard_normal((n_queries, dim), dtype=np.float32)
    qvec /= np.linalg.norm(qvec, axis=1, keepdims=True)
    fusion = FusionConfig()
    ranked_search(searcher, qvec[:2], k, lexical=(lexical, ids, qtexts[:2]), fusion=fusion)  # warm-up
    lat = {"dense": [], "hybrid": []}
    for i in range(n_queries):
        for mode in ("dense", "hybrid"):
            t = time.perf_counter()
            ranked_search(searcher, qvec[i:i + 1], k, lexical=(lexical, ids, qtexts[i:i + 1]) if mode == "hybrid" else None, fusion=fusion)
            lat[mode].append(time.perf_counter() - t)
    batch = {}
    for mode in ("dense", "hybrid"):
        t = time.perf_counter()
        ranked_search(searcher, qvec, k, lexical=(lexical, ids, qtexts) if mode == "hybrid" else None, fusion=fusion)
        batch[mode] = round(n_queries / (time.perf_counter() - t), 2)
    out = {"passages": n, "dim": dim, "k": k, "queries": n_queries, "vectors_s": round(t_vectors, 1),
           "bm25_index_s": round(t_bm25, 1), "single_dense": _pct(lat["dense"]), "single_hybrid": _pct(lat["hybrid"]),
           "batch_queries_per_s": batch}
    out["p50_ratio_hybrid_over_dense"] = round(out["single_hybrid"]["p50_ms"] / out["single_dense"]["p50_ms"], 3)
    out["batch_throughput_ratio_hybrid_over_dense"] = round(batch["hybrid"] / batch["dense"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", help="a hybrid index folder")
    ap.add_argument("--queries", default="../shared/datasets/scifact", help="BEIR folder whose queries are searched")
    ap.add_argument("--split", default="test")
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    ap.add_argument("--synthetic", type=int, default=0, help="also N synthetic passages (e.g. 1000000)")
    ap.add_argument("--synthetic-queries", type=int, default=50)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()
    result: dict = {"benchmark": "hybrid", "threads": os.cpu_count()}
    if args.index:
        result["index"] = bench_index(args.index, args.queries, args.split, args.k, args.single)
        print(f"index: p50 dense {result['index']['single_dense']['p50_ms']} ms, hybrid {result['index']['single_hybrid']['p50_ms']} ms; "
              f"batch {result['index']['batch_queries_per_s']}", file=sys.stderr)
    if args.synthetic:
        result["synthetic"] = bench_synthetic(args.synthetic, 384, args.k, args.synthetic_queries)
        print(f"synthetic: p50 dense {result['synthetic']['single_dense']['p50_ms']} ms, hybrid {result['synthetic']['single_hybrid']['p50_ms']} ms; "
              f"batch {result['synthetic']['batch_queries_per_s']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
