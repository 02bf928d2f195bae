"""Benchmark: hybrid retrieval (BM25 fused with a dense model) -- which fusion, which weight, which rule.

For each model, the dense and BM25 runs of a dev split and of the test split are fused by every
method of ``embedtune.fusion`` over a grid of BM25 weights (exactly the code ``embedtune eval
--hybrid`` and ``search --hybrid`` use). The weight is chosen on dev; its test nDCG@10 is reported
beside the best weight on test (an oracle, only to show how far the dev choice is from it).

    python eval/bench_fusion.py --data ../shared/datasets/scifact --dev-split train --json
    python eval/bench_fusion.py --data ../shared/datasets/nfcorpus --dev-split dev --model minilm --model runs/nfcorpus/train/model

``--run RUN`` (repeatable) takes a recipe's run folder instead: its benchmark, its models (base and
tuned) and the dev queries its eval stage chose the weight on, with the recipe's fusion method.

``--dev-sizes 5,10,20,40,80`` compares the rules that pick a weight from the dev curve
(``evaluation.FUSION_RULES``, the same ``choose_weight`` ``eval`` calls): ``--draws`` times, n
queries are drawn from the dev split, each rule chooses on them, and the choice is scored on the
dev queries not drawn, against the a-priori weight 0.5 and against the best weight of those
queries. Everything inside the dev split; the test split only shows where each rule's choice on
the whole dev split lands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/scifact", help="BEIR folder")
    ap.add_argument("--dev-split", default="train", help="split the weight is chosen on (never the test split)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", action="append", help="dense model(s); default: minilm")
    ap.add_argument("--run", action="append", help="a recipe's run folder (its eval stage's benchmark, models and dev queries)")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--depth", type=int, default=100, help="candidates from each retriever")
    ap.add_argument("--dev-sizes", default="", help="e.g. 5,10,20,40,80: choose the weight on n dev queries, score it on the rest")
    ap.add_argument("--draws", type=int, default=300, help="random dev subsets per size (--dev-sizes)")
    ap.add_argument("--cache-dir", help="keep the embeddings here for the next run (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()

    from embedtune.config import ModelConfig
    from embedtune.errors import EmbedtuneError
    from embedtune.fusion import FUSION_METHODS, FusionConfig
    from embedtune.run_folder import read_manifest

    t0 = time.perf_counter()
    sizes = [int(n) for n in args.dev_sizes.split(",")] if args.dev_sizes else []
    result: dict = {"benchmark": "fusion", "depth": args.depth, "draws": args.draws}
    try:
        if args.run:
            result["runs"] = {}
            for run in args.run:
                manifest = read_manifest(os.path.join(run, "eval"))
                where = os.path.join(run, "eval", "manifest.json")
                if manifest is None:
                    raise SystemExit(f"error: {where}: not found -- --run takes a run folder whose eval stage has run")
                cfg = manifest["config"]
                if not cfg.get("fusion_dev_split"):
                    raise SystemExit(f"error: {where}: field 'fusion_dev_split': the run chose no fusion weight on dev (fixed weight)")
                models = {label: ModelConfig(**m) for label, m in zip(cfg["labels"], cfg["models"])}
                fusion = FusionConfig(**cfg["fusion"])
                result["runs"][run] = _study(cfg["benchmark"], cfg["fusion_dev_split"], cfg["split"], cfg["fusion_dev_queries"],
                                             models, (fusion.method,), fusion, sizes, args.draws, args.cache_dir)
        else:
            models = {name: ModelConfig(name=name, max_seq_length=args.max_seq_length) for name in args.model or ["minilm"]}
            result.update(data=args.data, dev_split=args.dev_split, split=args.split)
            result.update(_study(args.data, args.dev_split, args.split, None, models, FUSION_METHODS,
                                 FusionConfig(depth=args.depth), sizes, args.draws, args.cache_dir))
    except EmbedtuneError as e:
        raise SystemExit(f"error: {e}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))


def _study(data, dev_split, split, dev_queries, models, methods, base, sizes, draws, cache_dir) -> dict:
    """Per model and method: the dev choice (each rule) and where it lands on test, the oracle test
    weight, both curves; with ``sizes``, the rule comparison on subsets of the dev queries."""
    # an embedding cache, kept in --cache-dir or a temporary folder: each model encodes the corpus once, not per split
    with contextlib.nullcontext(cache_dir) if cache_dir else tempfile.TemporaryDirectory(prefix="bench-fusion-") as cache:
        return _study_in(data, dev_split, split, dev_queries, models, methods, base, sizes, draws, cache)


def _study_in(data, dev_split, split, dev_queries, models, methods, base, sizes, draws, cache) -> dict:
    from embedtune.corpus import load_beir
    from embedtune.evaluation import (FUSION_RULE, FUSION_RULES, bm25_run, choose_weight, compute_metrics, dense_run,
                                      fusion_matrix, mean_metrics)
    from embedtune.fusion import WEIGHT_GRID

    splits = {}
    for name, s in (("dev", dev_split), ("test", split)):
        ds = load_beir(data, s)
        keep = set(ds.qrels) if name == "test" or dev_queries is None else set(dev_queries) & set(ds.qrels)
        ds.queries = {q: text for q, text in ds.queries.items() if q in keep}
        ds.qrels = {q: r for q, r in ds.qrels.items() if q in keep}
        splits[name] = ds
    # fusion reads each list's top base.depth only (embedtune.fusion): retrieving deeper would change nothing
    lexical = {s: bm25_run(ds, top_k=base.depth)[0] for s, ds in splits.items()}
    weights = [float(w) for w in WEIGHT_GRID]
    out: dict = {"dev_queries": len(splits["dev"].qrels), "test_queries": len(splits["test"].qrels),
                 "bm25": {"ndcg@10": round(mean_metrics(compute_metrics(splits["test"].qrels, lexical["test"]))["ndcg@10"], 4)},
                 "models": {}}
    for label, cfg in models.items():
        dense = {s: dense_run(cfg, ds, top_k=base.depth, cache_dir=cache, show_progress=False)[0] for s, ds in splits.items()}
        row: dict = {"model": cfg.name, "dense": {"ndcg@10": round(mean_metrics(compute_metrics(splits["test"].qrels, dense["test"]))["ndcg@10"], 4)}}
        for method in methods:
            fusion = base.model_copy(update={"method": method})
            dev = fusion_matrix(dense["dev"], lexical["dev"], splits["dev"].qrels, fusion, weights)
            test = fusion_matrix(dense["test"], lexical["test"], splits["test"].qrels, fusion, weights)
            test_curve = test.mean(axis=0)
            oracle = weights.index(choose_weight(test, weights, rule="argmax")[0])  # the best weight on test, ties as on dev
            chosen = {}
            for rule in FUSION_RULES:
                w, p = choose_weight(dev, weights, rule=rule)
                chosen[rule] = {"weight": w, "p_vs_0.5": None if p is None else round(p, 4),
                                "test_ndcg@10": round(float(test_curve[weights.index(w)]), 4)}
            row[method] = {
                "dev_weight": chosen[FUSION_RULE]["weight"], "test_ndcg@10_at_dev_weight": chosen[FUSION_RULE]["test_ndcg@10"],
                "rules": chosen, "test_ndcg@10_at_0.5": round(float(test_curve[weights.index(0.5)]), 4),
                "oracle_test_weight": weights[oracle], "oracle_test_ndcg@10": round(float(test_curve[oracle]), 4),
                "dev_curve": [[w, round(float(v), 4)] for w, v in zip(weights, dev.mean(axis=0))],
                "test_curve": [[w, round(float(v), 4)] for w, v in zip(weights, test_curve)],
            }
            if sizes and method == base.method:
                row[method]["dev_size_study"] = _dev_size_study(dev, weights, sizes, draws)
            print(f"{label} {method}: " + ", ".join(f"{r} {c['weight']} -> test {c['test_ndcg@10']}" for r, c in chosen.items())
                  + f" (oracle {weights[oracle]} -> {test_curve[oracle]:.4f}; 0.5 -> {row[method]['test_ndcg@10_at_0.5']})", file=sys.stderr)
        out["models"][label] = row
    return out


def _dev_size_study(per_query, weights: list[float], sizes: list[int], draws: int) -> dict:
    """For each n and rule: the weight chosen on n random dev queries, scored on the other dev queries
    -- minus weight 0.5 there (mean, 5th percentile, share below), and minus the best weight there."""
    from embedtune.evaluation import FUSION_RULES, choose_weight

    half = weights.index(0.5)
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        if n >= per_query.shape[0]:
            continue
        gains = {r: [] for r in FUSION_RULES}
        regrets = {r: [] for r in FUSION_RULES}
        for _ in range(draws):
            pick = np.zeros(per_query.shape[0], bool)
            pick[rng.choice(per_query.shape[0], n, replace=False)] = True
            rest = per_query[~pick].mean(axis=0)
            for rule in FUSION_RULES:
                w, _ = choose_weight(per_query[pick], weights, rule=rule)
                gains[rule].append(rest[weights.index(w)] - rest[half])
                regrets[rule].append(rest[weights.index(w)] - rest.max())
        out[str(n)] = {rule: {"mean_gain_vs_0.5": round(float(np.mean(g)), 4), "p5_gain_vs_0.5": round(float(np.percentile(g, 5)), 4),
                              "share_below_0.5": round(float(np.mean(np.array(g) < 0)), 3),
                              "mean_vs_best": round(float(np.mean(regrets[rule])), 4)} for rule, g in gains.items()}
        print(f"  dev size {n}: " + "; ".join(f"{r} {v['mean_gain_vs_0.5']:+.4f} vs 0.5, {v['mean_vs_best']:+.4f} vs best"
                                           for r, v in out[str(n)].items()), file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
