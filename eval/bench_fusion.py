"""Benchmark: hybrid retrieval (BM25 fused with a dense model) -- which fusion, which weight.

For each model, the dense and BM25 runs of a dev split and of the test split are fused by every
method of ``embedtune.fusion`` over a grid of BM25 weights (exactly the code ``embedtune eval
--hybrid`` and ``search --hybrid`` use). The weight is chosen on dev; its test nDCG@10 is reported
beside the best weight on test (an oracle, only to show how far the dev choice is from it).

    python eval/bench_fusion.py --data ../shared/datasets/scifact --dev-split train --json
    python eval/bench_fusion.py --data ../shared/datasets/nfcorpus --dev-split dev --model minilm --model runs/nfcorpus/train/model

``--dev-sizes 5,10,20,40,80`` adds how far a weight chosen on only n dev queries can be trusted:
``--draws`` times, n queries are drawn from the dev split, the weight is chosen on them (as ``eval``
does) and scored on the dev queries not drawn, against the a-priori weight 0.5 on the same queries
(all inside the dev split), both as a plain argmax and with the rule ``eval`` applies
(``evaluation.FUSION_DEV_ALPHA``: leave 0.5 only on a significant dev gain).
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
    ap.add_argument("--dev-sizes", default="", help="e.g. 5,10,20,40,80: choose the weight on n dev queries, score it on the rest")
    ap.add_argument("--draws", type=int, default=500, help="random dev subsets per size (--dev-sizes)")
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
            test = choose_fusion(dense[args.split], lexical[args.split], test_qrels, base=base, alpha=None)  # the oracle argmax
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
            if args.dev_sizes and method == FusionConfig().method:  # the default fusion only
                row[method]["dev_size_study"] = _dev_size_study(
                    dense[args.dev_split], lexical[args.dev_split], splits[args.dev_split].qrels, base,
                    [int(n) for n in args.dev_sizes.split(",")], args.draws)
            print(f"{name} {method}: dev weight {dev.config.bm25_weight} -> test {row[method]['test_ndcg@10_at_dev_weight']} "
                  f"(oracle {test.config.bm25_weight} -> {test.dev_ndcg:.4f}; w=0.5 {row[method]['test_ndcg@10_at_0.5']})", file=sys.stderr)
        result["models"][name] = row
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))


def _dev_size_study(dense, lexical, qrels, base, sizes: list[int], draws: int) -> dict:
    """For each n: the weight chosen on n random dev queries, scored on the other dev queries, minus
    weight 0.5 on the same queries (mean, 5th percentile, share of draws below 0.5)."""
    import numpy as np

    from embedtune.evaluation import FUSION_DEV_ALPHA, compute_metrics, paired_randomization_test
    from embedtune.fusion import WEIGHT_GRID, fuse_runs

    qids = sorted(q for q in qrels if q in dense)
    weights = [float(w) for w in WEIGHT_GRID]
    per_query = np.zeros((len(qids), len(weights)))
    for j, w in enumerate(weights):
        ndcg = compute_metrics(qrels, fuse_runs(dense, lexical, base.model_copy(update={"bm25_weight": w})), only=("ndcg@10",))["ndcg@10"]
        per_query[:, j] = [ndcg.get(q, 0.0) for q in qids]
    half = weights.index(0.5)
    # ties go to the weight nearest 0.5, as choose_fusion breaks them
    tie_break = -np.abs(np.array(weights) - 0.5) * 1e-9
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        if n >= len(qids):
            continue
        gains, chosen, kept = [], [], []
        for _ in range(draws):
            pick = np.zeros(len(qids), bool)
            pick[rng.choice(len(qids), n, replace=False)] = True
            w = int(np.argmax(np.round(per_query[pick].mean(0), 10) + tie_break))
            rest = per_query[~pick]
            gains.append(rest[:, w].mean() - rest[:, half].mean())
            chosen.append(weights[w])
            # the rule eval uses: leave 0.5 only when the chosen weight beats it significantly on the drawn queries
            p = paired_randomization_test(per_query[pick, half], per_query[pick, w], permutations=1000)["p_value"] if w != half else 1.0
            kept.append(rest[:, w if p < FUSION_DEV_ALPHA else half].mean() - rest[:, half].mean())
        g = np.array(gains)
        out[str(n)] = {"mean_gain_vs_0.5": round(float(g.mean()), 4), "p5_gain_vs_0.5": round(float(np.percentile(g, 5)), 4),
                       "share_below_0.5": round(float((g < 0).mean()), 3), "weight_sd": round(float(np.std(chosen)), 3),
                       "significant_only_mean_gain_vs_0.5": round(float(np.mean(kept)), 4),
                       "significant_only_p5_gain_vs_0.5": round(float(np.percentile(kept, 5)), 4),
                       "significant_only_share_below_0.5": round(float((np.array(kept) < 0).mean()), 3)}
        print(f"  dev size {n}: vs 0.5 on the other dev queries {out[str(n)]}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
