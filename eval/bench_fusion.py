"""Benchmark: hybrid retrieval (BM25 fused with a dense model) -- which fusion, which weight.

For each model, the dense and BM25 runs of a dev split and of the test split are fused by every
method of ``embedtune.fusion`` over a grid of BM25 weights (exactly the code ``embedtune eval
--hybrid`` and ``search --hybrid`` use). The weight is chosen on dev; its test nDCG@10 is reported
beside the best weight on test (an oracle, only to show how far the dev choice is from it).

    python eval/bench_fusion.py --data ../shared/datasets/scifact --dev-split train --json
    python eval/bench_fusion.py --data ../shared/datasets/nfcorpus --dev-split dev --model minilm --model runs/nfcorpus/train/model
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/scifact", help="BEIR folder")
    ap.add_argument("--dev-split", default="train", help="split the weight is chosen on (never the test split)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", action="append", help="dense model(s); default: minilm")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--depth", type=int, default=100, help="candidates from each retriever")
    ap.add_argument("--lookup-depth", type=int, default=100, help="how deep each list is read to score the other's candidates")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()

    from embedtune.config import ModelConfig
    from embedtune.corpus import load_beir
    from embedtune.evaluation import bm25_run, compute_metrics, dense_run, mean_metrics
    from embedtune.evaluation import choose_fusion
    from embedtune.fusion import FUSION_METHODS, FusionConfig, fuse_runs

    t0 = time.perf_counter()
    splits = {}
    for split in (args.dev_split, args.split):
        ds = load_beir(args.data, split)
        ds.queries = {q: text for q, text in ds.queries.items() if q in ds.qrels}
        splits[split] = ds
    lexical = {s: bm25_run(ds, top_k=args.lookup_depth)[0] for s, ds in splits.items()}
    result: dict = {"benchmark": "fusion", "data": args.data, "dev_split": args.dev_split, "split": args.split,
                    "depth": args.depth, "lookup_depth": args.lookup_depth, "models": {}}
    result["bm25"] = {"ndcg@10": round(mean_metrics(compute_metrics(splits[args.split].qrels, lexical[args.split]))["ndcg@10"], 4)}
    for name in args.model or ["minilm"]:
        cfg = ModelConfig(name=name, max_seq_length=args.max_seq_length)
        dense = {s: dense_run(cfg, ds, top_k=args.lookup_depth, cache_dir=None, show_progress=False)[0] for s, ds in splits.items()}
        test_qrels = splits[args.split].qrels
        row: dict = {"dense": {"ndcg@10": round(mean_metrics(compute_metrics(test_qrels, dense[args.split]))["ndcg@10"], 4)}}
        for method in FUSION_METHODS:
            base = FusionConfig(method=method, depth=args.depth)
            dev = choose_fusion(dense[args.dev_split], lexical[args.dev_split], splits[args.dev_split].qrels, base=base)
            test = choose_fusion(dense[args.split], lexical[args.split], test_qrels, base=base)
            at_half = fuse_runs(dense[args.split], lexical[args.split], base)
            chosen = fuse_runs(dense[args.split], lexical[args.split], dev.config)
            row[method] = {
                "dev_weight": dev.config.bm25_weight, "dev_ndcg@10": round(dev.dev_ndcg, 4),
                "test_ndcg@10_at_dev_weight": round(mean_metrics(compute_metrics(test_qrels, chosen, only=("ndcg@10",)))["ndcg@10"], 4),
                "test_ndcg@10_at_0.5": round(mean_metrics(compute_metrics(test_qrels, at_half, only=("ndcg@10",)))["ndcg@10"], 4),
                "oracle_test_weight": test.config.bm25_weight, "oracle_test_ndcg@10": round(test.dev_ndcg, 4),
                "test_curve": [[w, round(v, 4)] for w, v in test.curve[method]],
                "dev_curve": [[w, round(v, 4)] for w, v in dev.curve[method]],
            }
            print(f"{name} {method}: dev weight {dev.config.bm25_weight} -> test {row[method]['test_ndcg@10_at_dev_weight']} "
                  f"(oracle {test.config.bm25_weight} -> {test.dev_ndcg:.4f}; w=0.5 {row[method]['test_ndcg@10_at_0.5']})", file=sys.stderr)
        result["models"][name] = row
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
