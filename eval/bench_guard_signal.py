"""Benchmark: which no-label dev signal tells a better student from a worse one?

Without labelled queries the select stage (the regression guard) scores base and tuned on held-out
pseudo-queries, each judged by the document it was cut from. On the demo corpus that signal shipped
students that were no better than the base on real queries (eval/results/distillation.md). This
scores a finished no-label run's base and tuned models on the same held-out pseudo-queries two ways:
judged by their source document (what select uses) and by the hybrid teacher's top 10 (BM25 fused
with the base model, graded 10..1; ``selection.teacher_judgements``, what select's teacher guard uses)
-- each with the paired test tuned vs base. Compare the deltas with the run's real test deltas.
Unlike select, which searches the dev split's corpus sample, this searches the whole corpus.

    python eval/bench_guard_signal.py --run runs/unsupervised --json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="folder of a finished `embedtune run` with pairs: self")
    ap.add_argument("--depth", type=int, default=100, help="candidates from the dense retriever")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()

    from embedtune.config import ModelConfig
    from embedtune.corpus import BeirDataset, load_corpus
    from embedtune.evaluation import compute_metrics, dense_run, paired_randomization_test
    from embedtune.pipeline import Pipeline, PipelineConfig
    from embedtune.selection import teacher_judgements

    run = Path(args.run)
    if not (run / "pipeline.json").is_file():
        raise SystemExit(f"{run}: not an `embedtune run` folder (no pipeline.json)")
    stored = json.loads((run / "pipeline.json").read_text())["config"]
    cfg = PipelineConfig(**stored | {"run_dir": str(run)})  # the folder where it is now
    pipeline = Pipeline(cfg, source=str(run / "pipeline.json"))
    dev = pipeline.dev_split()  # the queries training held out, as select scores them
    if dev is None:
        raise SystemExit(f"{run}: the run has no dev split to score")
    corpus = load_corpus(pipeline.corpus())  # the whole corpus the run mined, not the dev search's sample
    ds = BeirDataset(path=run, split="dev", corpus=corpus, queries=dev.queries,
                     qrels={q: {d: 1 for d in docs} for q, docs in dev.relevant.items()})
    models = {"base": cfg.model, "tuned": ModelConfig(**pipeline.model_config(run / "train" / "model"))}
    runs = {name: dense_run(m, ds, top_k=args.depth, cache_dir=None, show_progress=False)[0] for name, m in models.items()}
    teacher_qrels = teacher_judgements(runs["base"], ds.queries, {d: doc.full_text for d, doc in corpus.items()},
                                       pipeline.teacher_bm25_weight())  # the run's teacher, as select judges
    result = {"benchmark": "guard_signal", "run": str(run), "dev": dev.description, "dev_queries": len(ds.qrels)}
    for signal, qrels in (("source_document", ds.qrels), ("teacher_top10", teacher_qrels)):
        per_query = {n: compute_metrics(qrels, r, only=("ndcg@10",))["ndcg@10"] for n, r in runs.items()}
        qids = sorted(qrels)
        test = paired_randomization_test([per_query["base"].get(q, 0.0) for q in qids], [per_query["tuned"].get(q, 0.0) for q in qids])
        result[signal] = {n: round(sum(v.get(q, 0.0) for q in qids) / len(qids), 4) for n, v in per_query.items()}
        result[signal] |= {"delta": round(test["delta"], 4), "ci95": [round(x, 4) for x in test["ci95"]], "p_value": round(test["p_value"], 4)}
        print(f"{signal}: base {result[signal]['base']}, tuned {result[signal]['tuned']} "
              f"({test['delta']:+.4f}, p = {test['p_value']:.3g})", file=__import__("sys").stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
