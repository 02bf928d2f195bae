"""Benchmark: how much of the hybrid teacher a student absorbs when the queries are real (#16, #17).

The no-label recipe learns from pseudo-queries made from the corpus (ICT sentences), and its
students keep little of their teacher's lead over the base. Is the cause the pseudo-queries or the
teacher? This bench removes the first: it trains a recipe's query side (``train.side: query``) on
the *real* training queries' text with their judgements left out, so the hybrid teacher (BM25 fused
with the base model over the whole corpus, ``train.hybrid_teacher``) is the only signal -- what a
team with query logs and no labels would have. The best epoch is chosen on a labeled dev split
(the recipe's ``train.dev``: its ``source``, or a seeded ``holdout_fraction`` of the training
queries); the test split is only scored: base, tuned, BM25, hybrid(base) and hybrid(tuned) at the
fixed BM25 weight 0.5 (as the no-label recipe serves), nDCG@10 with the 95% CI and paired p against
the base and against hybrid(base) (``embedtune.evaluation``, what ``embedtune eval --hybrid``
prints).

Writes eval/results/teacher_ceiling.json, one entry per collection; ``--json`` prints this run's
object as the last stdout line.

    python eval/bench_teacher_ceiling.py --config configs/query-encoder.yaml --json
    python eval/bench_teacher_ceiling.py --config configs/nfcorpus-query-encoder.yaml --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "eval" / "results" / "teacher_ceiling.json"


def split_queries(folder: Path, train_split: str, dev_cfg, seed: int) -> tuple[dict, dict, dict]:
    """(unlabeled training queries, dev queries, dev judgements): the dev split is the recipe's
    ``train.dev.source`` (sampled to ``max_queries``) or a seeded share of the training queries."""
    from embedtune.corpus import load_beir, parse_benchmark_source

    train = load_beir(folder, train_split)
    judged = sorted(q for q, r in train.qrels.items() if q in train.queries and any(s > 0 for s in r.values()))
    rng = random.Random(seed)
    if dev_cfg.source:
        dev_folder, split = parse_benchmark_source(dev_cfg.source)
        dev = load_beir(dev_folder, split)
        dev_ids = sorted(q for q, r in dev.qrels.items() if q in dev.queries and any(s > 0 for s in r.values()))
        dev_queries, dev_qrels = dev.queries, dev.qrels
    else:
        shuffled = judged[:]
        rng.shuffle(shuffled)
        dev_ids = sorted(shuffled[: max(1, round(dev_cfg.holdout_fraction * len(judged)))])
        dev_queries, dev_qrels = train.queries, train.qrels
    if dev_cfg.max_queries and len(dev_ids) > dev_cfg.max_queries:
        dev_ids = sorted(rng.sample(dev_ids, dev_cfg.max_queries))
    held = set(dev_ids) if not dev_cfg.source else set()
    unlabeled = {q: train.queries[q] for q in judged if q not in held}
    dev_relevant = {q: {d for d, s in dev_qrels[q].items() if s > 0} for q in dev_ids}
    return unlabeled, {q: dev_queries[q] for q in dev_ids}, dev_relevant


def main() -> None:
    from embedtune.errors import EmbedtuneError

    try:
        run()
    except EmbedtuneError as err:  # a bad config or data path: one line, as the CLI prints it
        sys.exit(f"error: {err}")


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a query-side recipe (train.side: query); its data, model and train sections are used")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_teacher_ceiling"), help="folder for the trained model")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args()

    from embedtune.cli.app import setup_logging
    from embedtune.config import ModelConfig
    from embedtune.corpus import load_beir
    from embedtune.evaluation import HEADLINE, EvalConfig, evaluate, summary_json
    from embedtune.fusion import FusionConfig
    from embedtune.io import atomic_write_json
    from embedtune.pipeline import Pipeline, load_pipeline_config
    from embedtune.query_side import train_query_side
    from embedtune.training.config import resolve_training_precision

    setup_logging(quiet=args.json)
    t0 = time.perf_counter()
    pipeline = Pipeline(load_pipeline_config(args.config), source=args.config)
    cfg = pipeline.configs["train"]
    if cfg.side != "query" or cfg.hybrid_teacher is None:
        sys.exit(f"error: {args.config}: field 'train': the bench trains the query side with its hybrid teacher "
                 "(set train.side: query and train.hybrid_teacher)")
    folder, test_split = pipeline.benchmark()
    corpus = {d: doc.full_text for d, doc in load_beir(folder, test_split).corpus.items()}
    unlabeled, dev_queries, dev_relevant = split_queries(folder, pipeline.cfg.data.train_split, cfg.dev, cfg.seed)
    out = Path(args.work).resolve() / folder.name
    trained = train_query_side(cfg, corpus, unlabeled, {}, dev_queries, dev_relevant, out,
                               precision=resolve_training_precision(cfg.precision), progress=not args.json)
    length = {"max_seq_length": cfg.model.max_seq_length}
    results = evaluate(EvalConfig(benchmark=str(folder), split=test_split, bm25=True, hybrid=True, depth=100,
                                  fusion=FusionConfig(bm25_weight=0.5), labels=["base", "tuned"],
                                  models=[ModelConfig(name=cfg.model.name, **length), ModelConfig(name=str(out), **length)]),
                       show_progress=not args.json)
    summary = summary_json(results)
    kept = (HEADLINE, "recall@100")  # the figures the targets name; the whole table is embedtune eval's
    summary["models"] = {n: {m: round(v[m], 4) for m in kept} for n, v in summary["models"].items()}
    for table in (summary["deltas"], *summary["deltas_vs"].values()):
        for name, metrics in table.items():
            table[name] = {m: {k: (round(x, 4) if isinstance(x, float) else [round(c, 4) for c in x]) for k, x in metrics[m].items()}
                           for m in kept}
    entry = {
        "recipe": args.config, "unlabeled_train_queries": len(unlabeled),
        "dev": {"queries": len(dev_queries), "base": trained["base_dev"], "best": trained["best_dev"],
                "best_step": trained["best_step"], "curve": trained["curve"]["dev"]},
        "test": {k: summary[k] for k in ("split", "queries", "models", "deltas", "deltas_vs", "best")},
        "train_seconds": round(trained["seconds"], 1), "seconds": round(time.perf_counter() - t0, 1),
    }
    models = summary["models"]
    print(f"{folder.name}: {len(unlabeled)} unlabeled training queries; dev {trained['base_dev']:.4f} -> {trained['best_dev']:.4f}; test "
          + ", ".join(f"{n} {m[HEADLINE]:.4f}" for n, m in models.items()), file=sys.stderr)
    for name, d in summary["deltas"].items():
        vs = summary["deltas_vs"]["hybrid(base)"].get(name, {}).get(HEADLINE)
        line = f"  {name}: {d[HEADLINE]['delta']:+.4f} vs base (p = {d[HEADLINE]['p_value']:.4f})"
        if vs:
            line += f", {vs['delta']:+.4f} vs hybrid(base) (p = {vs['p_value']:.4f})"
        print(line, file=sys.stderr)
    if not args.no_write:
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        print(f"wrote {atomic_write_json(RESULTS, {**old, folder.name: entry})}", file=sys.stderr)
    if args.json:
        print(json.dumps({folder.name: entry}))


if __name__ == "__main__":
    main()
