"""Benchmark: retrieval quality of BM25 and all-MiniLM-L6-v2 on the BEIR datasets at hand.

For every dataset in ../shared/datasets (or the folders given) with a test split, runs
``embedtune.evaluation.evaluate`` exactly as ``embedtune eval --model minilm --bm25`` does (exact
cosine search over title + " " + text, pytrec_eval metrics as in BEIR), with the model in fp32 so
that the figures compare with the published ones (all-MiniLM-L6-v2 nDCG@10: SciFact 0.6451,
NFCorpus 0.3159). Corpus and query embeddings come from the shared embedding cache when present.

Writes eval/results/quality.md (every metric, per dataset, per system, plus the paired test of
MiniLM vs BM25); the last stdout line with ``--json`` is one JSON object with ``ndcg@10`` per
dataset per system.

    python eval/bench_quality.py --json
    python eval/bench_quality.py ../shared/datasets/scifact --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "eval" / "results" / "quality.md"
# all-MiniLM-L6-v2, exact cosine over title + " " + text (the project's reference figures)
REFERENCE_NDCG10 = {"scifact": 0.6451, "nfcorpus": 0.3159}
TOLERANCE = 0.002


def datasets(paths: list[str]) -> list[Path]:
    if paths:
        return [Path(p).resolve() for p in paths]
    return sorted(p for p in DATASETS.iterdir() if (p / "corpus.jsonl").is_file() and (p / "qrels" / "test.tsv").is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help="BEIR folders [default: every one in ../shared/datasets]")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()

    from embedtune.cli.app import setup_logging
    from embedtune.config import ModelConfig
    from embedtune.evaluation import HEADLINE, METRICS, EvalConfig, evaluate

    setup_logging()
    rows: dict[str, dict] = {}
    for folder in datasets(args.datasets):
        t0 = time.perf_counter()
        cfg = EvalConfig(benchmark=str(folder), split="test", models=[ModelConfig(name=args.model, precision="fp32")],
                         labels=["all-MiniLM-L6-v2" if args.model == "minilm" else args.model], bm25=True)
        results = evaluate(cfg, show_progress=not args.json)
        rows[folder.name] = {"results": results, "seconds": round(time.perf_counter() - t0, 1)}
        dense, bm25 = results["systems"]
        print(f"{folder.name}: {HEADLINE} {dense['name']} {dense['metrics'][HEADLINE]:.4f}, bm25 {bm25['metrics'][HEADLINE]:.4f} "
              f"({rows[folder.name]['seconds']} s, corpus from cache: {dense['corpus_from_cache']})", file=sys.stderr)

    summary = {"metric": HEADLINE, "split": "test", "ndcg@10": {}, "reference_ndcg@10": {}, "within_tolerance": {}}
    for name, row in rows.items():
        systems = row["results"]["systems"]
        summary["ndcg@10"][name] = {s["name"]: round(s["metrics"][HEADLINE], 4) for s in systems}
        if name in REFERENCE_NDCG10:
            got = systems[0]["metrics"][HEADLINE]
            summary["reference_ndcg@10"][name] = REFERENCE_NDCG10[name]
            summary["within_tolerance"][name] = abs(got - REFERENCE_NDCG10[name]) <= TOLERANCE
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(render(rows, METRICS, HEADLINE))
        print(f"wrote {RESULTS}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))


def render(rows: dict[str, dict], metrics, headline: str) -> str:
    lines = [
        "# Retrieval quality: BM25 and all-MiniLM-L6-v2 (test splits)",
        "",
        "Written by `python eval/bench_quality.py --json` (`embedtune.evaluation.evaluate`, the code behind "
        "`embedtune eval --model minilm --bm25`). Dense: all-MiniLM-L6-v2 in fp32, exact cosine search over "
        "title + \" \" + text. BM25: bm25s, Lucene variant (k1=1.5, b=0.75), English stopwords, Snowball "
        "stemmer; documents sharing no term with the query are not returned. Metrics: pytrec_eval as in BEIR "
        "(graded qrels, a query's own id removed from its results); MRR@10 as BEIR's custom metric.",
        "",
    ]
    for name, row in rows.items():
        res = row["results"]
        systems = res["systems"]
        lines += [f"## {name} ({res['queries']} queries, {res['documents']} documents)", "",
                  "| metric | " + " | ".join(s["name"] for s in systems) + " |", "|---|" + "---:|" * len(systems)]
        for m in metrics:
            lines.append(f"| {m} | " + " | ".join(f"{s['metrics'][m]:.4f}" for s in systems) + " |")
        ref = REFERENCE_NDCG10.get(name)
        if ref is not None:
            got = systems[0]["metrics"][headline]
            lines += ["", f"Reference {headline} of all-MiniLM-L6-v2: {ref:.4f}; measured {got:.4f} "
                          f"({got - ref:+.4f}, {'within' if abs(got - ref) <= TOLERANCE else 'OUTSIDE'} ±{TOLERANCE})."]
        c = res["comparisons"][0]
        d = c["metrics"][headline]
        wtl = c[f"{headline}_per_query"]
        lines += ["", f"{c['system']} vs {c['baseline']} ({headline}): {d['delta']:+.4f}, 95% CI "
                      f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], p = {d['p_value']:.4f} (paired randomization "
                      f"test over queries); per query {wtl['wins']} wins / {wtl['ties']} ties / {wtl['losses']} losses.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
