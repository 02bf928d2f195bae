"""Benchmark: embedtune's hard-negative mining vs sentence-transformers' ``mine_hard_negatives``.

Mines SciFact train (809 queries, 5,183 documents) with the packaged MiniLM, 8 negatives from the
top 50, relative margin 0.05, ``top`` sampling, both end to end (model load, data, encoding,
search, filtering, dataset written to disk) and in the same process:

1. sentence-transformers, no embedding cache (cold);
2. embedtune with its embedding cache in a fresh temporary folder (cold);
3. embedtune again into another run folder with the cache now warm.

Prints the times, the ratios and how many of sentence-transformers' negatives embedtune chose
too (``overlap_with_st``); negatives it left out because one of its extra filters removed them
(known positive or duplicate text of a positive) are counted separately. The last stdout line
with ``--json`` is one JSON object.

    python eval/bench_mining.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_pairs(source: str):
    from embedtune.corpus import load_beir, parse_benchmark_source

    folder, split = parse_benchmark_source(source)
    ds = load_beir(folder, split)
    rows = [(ds.queries[q], ds.corpus[d].full_text) for q, judged in ds.qrels.items() for d, s in judged.items() if s > 0]
    return folder, ds, rows


def run_st(model_path: str, source: str, args, out_dir: Path) -> tuple[float, list[tuple[str, str, list[str]]]]:
    """sentence-transformers end to end: load model + data, mine, save the dataset."""
    start = time.perf_counter()
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(model_path, device="cpu")
    _, ds, rows = load_pairs(source)
    corpus = [d.full_text for d in ds.corpus.values()]
    dataset = Dataset.from_dict({"query": [q for q, _ in rows], "positive": [p for _, p in rows]})
    mined = mine_hard_negatives(
        dataset, model, corpus=corpus, range_min=0, range_max=args.range_max, relative_margin=args.relative_margin,
        num_negatives=args.num_negatives, sampling_strategy="top", output_format="n-tuple", output_scores=True,
        batch_size=args.batch_size, verbose=False,
    )
    mined.save_to_disk(str(out_dir / "st-dataset"))
    elapsed = time.perf_counter() - start
    neg_cols = [f"negative_{i}" for i in range(1, args.num_negatives + 1)]
    result = [(r["query"], r["positive"], [r[c] for c in neg_cols]) for r in mined]
    return elapsed, result


def run_ours(model: str, source: str, args, out_dir: Path, cache_dir: Path) -> tuple[float, dict]:
    from embedtune.config import ModelConfig
    from embedtune.mining import MineConfig, mine_hard_negatives

    cfg = MineConfig(
        model=ModelConfig(name=model, batch_size=args.batch_size, precision=args.precision), pairs=source, range_min=0, range_max=args.range_max,
        relative_margin=args.relative_margin, num_negatives=args.num_negatives, sampling="top", cache_dir=str(cache_dir),
    )
    start = time.perf_counter()
    summary = mine_hard_negatives(cfg, out_dir, overwrite=True, show_progress=False)
    return time.perf_counter() - start, summary


def overlap(st_rows, our_dir: Path, source: str) -> dict:

    ours: dict[tuple[str, str], list[str]] = {}
    with open(our_dir / "pairs.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            ours[(r["query"], r["positive"])] = r["negatives"]
    # what our extra filters exclude: every known positive of the query and duplicate texts of them
    _, ds, rows = load_pairs(source)
    positives_of: dict[str, set[str]] = {}
    for q, p in rows:
        positives_of.setdefault(q, set()).add(p)
    total = shared = extra_filtered = 0
    for query, positive, st_negs in st_rows:
        mine = set(ours.get((query, positive), []))
        for neg in st_negs:
            total += 1
            if neg in mine:
                shared += 1
            elif neg in positives_of.get(query, ()):
                extra_filtered += 1
    return {
        "st_negatives": total,
        "shared": shared,
        "overlap_with_st": shared / total if total else None,
        "st_negatives_removed_by_extra_filters": extra_filtered,
        "overlap_with_st_excluding_extra_filters": shared / (total - extra_filtered) if total - extra_filtered else None,
        "st_rows": len(st_rows),
        "our_rows": len(ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="scifact:train")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--num-negatives", type=int, default=8)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64, help="Encoding batch size, the same for both.")
    parser.add_argument("--precision", default="auto", help="embedtune's encoding precision (auto = its default; fp32 = ST's).")
    parser.add_argument("--results", default=None, help="Also write the JSON figures to this file.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object as the last stdout line.")
    args = parser.parse_args()

    import torch

    from embedtune.models import load_model, resolve_model_path

    model_path = str(resolve_model_path(args.model))
    # Pay one-off costs (imports, thread pools, first-call kernels) before timing either side.
    warm = load_model(args.model)
    warm.st.encode(["warm up the thread pool"] * 8, batch_size=8)
    del warm

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-mining-") as tmp:
        tmp = Path(tmp)
        st_time, st_rows = run_st(model_path, args.source, args, tmp)
        print(f"sentence-transformers (cold): {st_time:.1f} s, {len(st_rows)} rows", file=sys.stderr)
        cold_time, cold = run_ours(args.model, args.source, args, tmp / "ours-cold", tmp / "cache")
        print(f"embedtune (cold cache):       {cold_time:.1f} s", file=sys.stderr)
        warm_time, warm_summary = run_ours(args.model, args.source, args, tmp / "ours-warm", tmp / "cache")
        print(f"embedtune (warm cache):       {warm_time:.1f} s", file=sys.stderr)
        figures = overlap(st_rows, tmp / "ours-cold", args.source)

    result = {
        "benchmark": "mining",
        "source": args.source,
        "model": args.model,
        "settings": {"num_negatives": args.num_negatives, "range_max": args.range_max, "relative_margin": args.relative_margin,
                     "sampling": "top", "batch_size": args.batch_size, "our_precision": args.precision},
        "st_seconds": round(st_time, 2),
        "ours_cold_seconds": round(cold_time, 2),
        "ours_warm_seconds": round(warm_time, 2),
        "speedup_vs_st_cold": round(st_time / cold_time, 3),
        "speedup_warm": round(st_time / warm_time, 3),
        **figures,
        "our_filter_counts": cold["filter_counts"],
        "our_rows_full": cold["rows_full"],
        "our_timings_cold": {k: round(v, 2) for k, v in cold["timings"].items()},
        "our_timings_warm": {k: round(v, 2) for k, v in warm_summary["timings"].items()},
        "torch_threads": torch.get_num_threads(),
        "load_average_start": round(load, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
    }
    print(f"speedup vs sentence-transformers: cold {result['speedup_vs_st_cold']:.2f}x, warm {result['speedup_warm']:.1f}x; "
          f"overlap with its negatives {result['overlap_with_st']:.3f}", file=sys.stderr)
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
