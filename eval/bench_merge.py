"""Benchmark: what weight merging does in domain and out of domain (WiSE-FT / LM-Cocktail).

A model tuned on one collection is merged with its base at each alpha (0 = the base, 1 = the tuned
model; ``embedtune.merging.merge_folders``, what ``embedtune merge`` and the select stage do) and
every merge is evaluated on the tuned model's own test split and on collections it never saw (by
default NFCorpus' test split and the demo docstring corpus' test split). Each row: nDCG@10 with
the 95% CI and p of the paired randomization test against the base model (``embedtune.evaluation``,
what ``embedtune eval`` prints).

The question it answers: how much of the in-domain gain a merge keeps, and how much of the
out-of-domain loss (if any) it removes.

Writes eval/results/merge.json, one entry per in-domain collection (a run for SciFact keeps the
NFCorpus-tuned entry, and the reverse); ``--json`` prints this run's object as the last stdout line.

    python eval/bench_merge.py --tuned runs/scifact/train/model --in-domain ../shared/datasets/scifact --json
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

RESULTS = ROOT / "eval" / "results" / "merge.json"
DEMO = "demo"  # the docstring corpus embedtune demo builds


def benchmark_folder(name: str, work: Path) -> Path:
    """The demo corpus (built into ``work``) or a BEIR folder/name resolved as ``embedtune eval`` does."""
    if name == DEMO:
        from embedtune.demo_corpus import build_docstring_corpus

        return build_docstring_corpus(work / "docstrings")
    from embedtune.corpus import parse_benchmark_source

    return parse_benchmark_source(f"{name}:test")[0]


def merge_entry(path: Path, in_domain: str, summary: dict) -> dict:
    """The results file with ``summary`` as the entry of the collection the model was tuned on, the
    other collections' entries kept (a file of the older one-study shape becomes its entry)."""
    from embedtune.evaluation import HEADLINE

    old = json.loads(path.read_text()) if path.is_file() else {}
    if "benchmarks" in old:  # the one-study shape written before entries existed
        old = {"by_in_domain": {next(n for n, r in old["benchmarks"].items() if r["role"] == "in-domain"): old}}
    entries = dict(old.get("by_in_domain", {}))
    entries[in_domain] = summary
    return {"metric": HEADLINE, "by_in_domain": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", required=True, help="the tuned model folder (e.g. RUN/train/model)")
    parser.add_argument("--base", default="minilm", help="the model it was tuned from")
    parser.add_argument("--in-domain", required=True, help="BEIR folder or name the model was tuned on (its test split)")
    parser.add_argument("--out-of-domain", default=f"nfcorpus,{DEMO}", help=f"comma-separated BEIR folders or names; '{DEMO}' = the docstring corpus")
    parser.add_argument("--alphas", default="0.5,0.75,1.0", help="merge weights (1 = the tuned model); the base (0) is always evaluated")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="token limit for every model (default: the base model's; a model saved at another length, "
                             "e.g. tuned at 128 beside a base at 256, is evaluated at the base's)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_merge"), help="folder for the merged models")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()

    from embedtune.cli.app import setup_logging
    from embedtune.config import ModelConfig
    from embedtune.evaluation import HEADLINE, EvalConfig, evaluate
    from embedtune.io import atomic_write_json
    from embedtune.merging import merge_folders
    from embedtune.models import load_model, model_fingerprint

    setup_logging()
    work = Path(args.work).resolve()
    alphas = [float(a) for a in args.alphas.split(",")]
    # one length for every model: a tuned folder saves the length it was trained at, and the base
    # at 256 against a model at 128 would measure truncation, not tuning
    max_seq_length = args.max_seq_length or load_model(ModelConfig(name=args.base)).max_seq_length
    length = {"max_seq_length": max_seq_length}
    models, labels = [ModelConfig(name=args.base, **length)], ["base"]
    tuned_id = model_fingerprint(args.tuned)[:12]  # merges of another tuned model in the same --work are others
    for alpha in alphas:
        if alpha == 1.0:
            models.append(ModelConfig(name=str(Path(args.tuned).resolve()), **length))
        else:
            out = work / f"merged-{tuned_id}-{alpha:g}"
            if not (out / "modules.json").is_file():  # merging is deterministic: a folder already written is the same
                merge_folders(ModelConfig(name=args.base), [ModelConfig(name=args.tuned)], alpha, out)
            models.append(ModelConfig(name=str(out), **length))
        labels.append(f"alpha={alpha:g}")

    rows: dict[str, dict] = {}
    for role, names in (("in-domain", [args.in_domain]), ("out-of-domain", args.out_of_domain.split(","))):
        for name in (n.strip() for n in names):
            folder = benchmark_folder(name, work)
            t0 = time.perf_counter()
            results = evaluate(EvalConfig(benchmark=str(folder), split="test", models=models, labels=labels), show_progress=not args.json)
            by_system = {c["system"]: c for c in results["comparisons"]}
            row = {"role": role, "queries": results["queries"], "seconds": round(time.perf_counter() - t0, 1), "systems": {}}
            for s in results["systems"]:
                entry = {HEADLINE: round(s["metrics"][HEADLINE], 4)}
                if s["name"] in by_system:
                    c = by_system[s["name"]]["metrics"][HEADLINE]
                    entry.update(delta=round(c["delta"], 4), ci95=[round(x, 4) for x in c["ci95"]], p_value=round(c["p_value"], 4))
                row["systems"][s["name"]] = entry
            rows[DEMO if name == DEMO else folder.name] = row
            print(f"{folder.name} ({role}): " + ", ".join(f"{k} {v[HEADLINE]:.4f}" + (f" ({v['delta']:+.4f}, p={v['p_value']:.3f})" if "delta" in v else "")
                                                         for k, v in row["systems"].items()), file=sys.stderr)
    in_domain = next(name for name, row in rows.items() if row["role"] == "in-domain")
    summary = {"tuned": str(args.tuned), "base": args.base, "metric": HEADLINE, "split": "test",
               "max_seq_length": max_seq_length, "benchmarks": rows}
    if not args.no_write:
        print(f"wrote {atomic_write_json(RESULTS, merge_entry(RESULTS, in_domain, summary))}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
