"""Benchmark: query-side adaptation against the full fine-tune, side by side (issue: keep the index).

For one BEIR test split, each system's nDCG@10 with its 95% CI and paired p against the base
model, its training time (from the run's train manifest), its size on disk (what a user adds to
what they already store) and whether documents must be re-encoded. Then the same nDCG@10 on two
halves of the test queries: those with a relevant document that some *training* query also has
("seen" documents) and those without. A model that only learned which documents the training
labels favour gains on the first half only; on SciFact that is where most of every gain is.

    python eval/bench_query_side.py --data scifact --max-seq-length 256 \
        --system "full fine-tune=runs/scifact" --system "query adapter=runs/query-only" --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def _size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 2)


def _added_mb(model_dir: Path) -> float:
    """What a query-side model adds to the encoder a user already has: its adapter folder."""
    from embedtune.models import QUERY_SIDE_FILE

    if not (model_dir / QUERY_SIDE_FILE).is_file():
        return _size_mb(model_dir)
    # adapter: the Router folder; encoder: the query route's modules (query_0_Transformer, ...)
    added = [p for p in model_dir.iterdir() if p.is_dir() and (p.name.endswith("_Router") or p.name.startswith("query_"))]
    return round(sum(_size_mb(p) for p in added), 2)


def _mean_ci(values: list[float], base: list[float]) -> dict | None:
    from embedtune.evaluation import paired_randomization_test

    if not values:  # e.g. NFCorpus: every test query has a document judged for a training query
        return None
    test = paired_randomization_test(base, values, permutations=10000)
    return {"ndcg@10": round(float(np.mean(values)), 4), "delta": round(test["delta"], 4),
            "ci95": [round(x, 4) for x in test["ci95"]], "p_value": round(test["p_value"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="BEIR folder or name")
    ap.add_argument("--split", default="test")
    ap.add_argument("--train-split", default="train", help="the split whose judged documents count as 'seen'")
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--system", action="append", required=True, help="'label=RUN_DIR' (its select/model is evaluated)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from embedtune.config import ModelConfig
    from embedtune.corpus import load_beir, parse_benchmark_source
    from embedtune.evaluation import compute_metrics, dense_run

    folder, _ = parse_benchmark_source(args.data)
    test = load_beir(folder, args.split)
    train = load_beir(folder, args.train_split)
    seen_docs = {d for judged in train.qrels.values() for d, s in judged.items() if s > 0}
    qids = sorted(test.qrels)
    seen = [q for q in qids if any(s > 0 and d in seen_docs for d, s in test.qrels[q].items())]
    unseen = [q for q in qids if q not in set(seen)]

    def per_query(name: str) -> dict[str, float]:
        run, _ = dense_run(ModelConfig(name=name, max_seq_length=args.max_seq_length), test, top_k=100, cache_dir=None, show_progress=False)
        return compute_metrics(test.qrels, run, only=("ndcg@10",))["ndcg@10"]

    base = per_query("minilm")
    rows = [{"system": "base", "ndcg@10": round(float(np.mean([base[q] for q in qids])), 4)}]
    for spec in args.system:
        label, run_dir = spec.split("=", 1)
        run_dir = Path(run_dir)
        model_dir = run_dir / "select" / "model"
        scores = per_query(str(model_dir))
        manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
        query_side = (model_dir / "query_side.json").is_file()
        row = {"system": label, **_mean_ci([scores[q] for q in qids], [base[q] for q in qids]),
               "train_seconds": manifest.get("timings", {}).get("total_s"),
               "model_mb": _size_mb(model_dir), "added_mb": _added_mb(model_dir),
               "documents_reencoded": not query_side,
               "seen": _mean_ci([scores[q] for q in seen], [base[q] for q in seen]),
               "unseen": _mean_ci([scores[q] for q in unseen], [base[q] for q in unseen])}
        rows.append(row)
    rows[0]["seen"] = {"ndcg@10": round(float(np.mean([base[q] for q in seen])), 4)} if seen else None
    rows[0]["unseen"] = {"ndcg@10": round(float(np.mean([base[q] for q in unseen])), 4)} if unseen else None
    result = {"dataset": folder.name, "split": args.split, "queries": len(qids), "seen_queries": len(seen),
              "unseen_queries": len(unseen), "systems": rows}
    if not args.json:
        print(f"{folder.name}:{args.split}  {len(qids)} queries ({len(seen)} with a document judged in {args.train_split}, {len(unseen)} without)", file=sys.stderr)
        for r in rows:
            extra = "" if r["system"] == "base" else (f"  d={r['delta']:+.4f} [{r['ci95'][0]:+.4f},{r['ci95'][1]:+.4f}] p={r['p_value']:.4f}"
                                                      f"  train {r['train_seconds']} s  +{r['added_mb']} MB  reencode={r['documents_reencoded']}")
            halves = "".join(f"  {h} {r[h]['ndcg@10']:.4f}" for h in ("seen", "unseen") if r[h])
            print(f"  {r['system']:<16} {r['ndcg@10']:.4f}{extra}{halves}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
