"""Benchmark: is labelling a few queries worth it? The nDCG@10 curve over 0, 50, 200 and all labels.

For each label count N the recipe a user would run is run unchanged, as ``embedtune run`` on a YAML
written next to its run folder (so every point can be traced and re-run by hand):

- N = 0: ``configs/unsupervised.yaml`` -- pseudo-queries from the corpus, the BM25 + base teacher;
- 0 < N < all: ``configs/scifact.yaml`` (the supervised recipe) on a copy of the benchmark whose
  ``qrels/<train split>.tsv`` keeps the judgements of N training queries drawn with a fixed seed
  (corpus, queries and the test qrels are links to the originals, so cached embeddings are reused);
- N = all: ``configs/scifact.yaml`` on the benchmark itself.

Every run evaluates on the test split, which no run ever trains or chooses on. Each point reports
tuned, hybrid(base), hybrid(tuned) and what the run shipped, with the 95% CI and p against the
base model and against hybrid(base) -- the zero-training baseline.

Runs take minutes (50 labels) to over an hour (all labels, or none) on a 2-core CPU; a run folder
that already holds a point's completed run is reused (the pipeline skips unchanged stages).
Writes eval/results/labels.json, keeping the points of earlier invocations that this one does not
re-run (each point names the commit it was measured at); ``--json`` prints one JSON object as the
last stdout line.

    python eval/bench_labels.py --json
    python eval/bench_labels.py --labels 50,200 --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "eval" / "results" / "labels.json"
SUPERVISED = ROOT / "configs" / "scifact.yaml"
UNSUPERVISED = ROOT / "configs" / "unsupervised.yaml"
NOTHING_BEAT_BASE = 8  # `embedtune run`'s documented exit code: the run shipped the base model


def read_qrels_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """A qrels TSV as its header and raw rows (written back unchanged for the kept queries)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def subset_benchmark(benchmark: Path, split: str, n_queries: int, seed: int, out: Path) -> tuple[Path, int]:
    """A BEIR folder whose ``split`` qrels keep the judgements of ``n_queries`` seeded training
    queries (all of a query's judgements: a query is labelled or not). Returns the folder and how
    many queries it holds."""
    header, rows = read_qrels_rows(benchmark / "qrels" / f"{split}.tsv")
    query_ids = sorted({r[0] for r in rows})
    if n_queries >= len(query_ids):
        return benchmark, len(query_ids)
    keep = set(random.Random(seed).sample(query_ids, n_queries))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = out / name
        if not link.exists():
            link.symlink_to((benchmark / name).resolve())
    for qrels in (benchmark / "qrels").glob("*.tsv"):
        if qrels.stem != split and not (out / "qrels" / qrels.name).exists():
            (out / "qrels" / qrels.name).symlink_to(qrels.resolve())
    tmp = out / "qrels" / f".{split}.tsv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(r for r in rows if r[0] in keep)
    tmp.replace(out / "qrels" / f"{split}.tsv")
    return out, len(keep)


def point_config(n_labels: int, benchmark: Path, runs: Path, seed: int) -> tuple[Path, int]:
    """Write the YAML of one point: the recipe with its data and run folder pointed here."""
    import yaml

    if n_labels == 0:
        cfg = yaml.safe_load(UNSUPERVISED.read_text())
        cfg["data"]["benchmark"] = str(benchmark)
        n_queries = 0
    else:
        cfg = yaml.safe_load(SUPERVISED.read_text())
        split = cfg["data"].get("train_split", "train")
        folder, n_queries = subset_benchmark(benchmark, split, n_labels, seed, runs / f"data-{n_labels}")
        cfg["data"]["benchmark"] = str(folder.resolve())
    name = f"labels-{n_queries}"
    cfg["run_dir"] = str((runs / name).resolve())
    path = runs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# written by eval/bench_labels.py: {n_queries} labelled training queries\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path, n_queries


def run_point(config: Path) -> dict:
    """One ``embedtune run --json`` (in its own process: each point's memory is its own)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "embedtune", "run", str(config), "--json", "--quiet"], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, check=False)  # exit 8 (base shipped) is a result
    if proc.returncode not in (0, NOTHING_BEAT_BASE):
        sys.exit(f"bench_labels: `embedtune run {config}` failed with exit code {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["bench_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def current_commit() -> str | None:
    """The checkout's short commit, so a kept point says what code measured it."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, check=False)
    return proc.stdout.strip() or None


def merge_points(old: list[dict], new: list[dict]) -> list[dict]:
    """The curve: this invocation's points, plus the earlier ones at label counts it did not run."""
    ran = {row["labelled_queries"] for row in new}
    return sorted([row for row in old if row["labelled_queries"] not in ran] + new, key=lambda r: r["labelled_queries"])


def point_row(n_queries: int, s: dict) -> dict:
    vs_hybrid = s.get("vs_hybrid_base", {})
    row = {
        "labelled_queries": n_queries,
        "commit": current_commit(),
        "base": round(s["base"]["ndcg@10"], 4),
        "tuned": round(s["tuned"]["ndcg@10"], 4),
        "tuned_vs_base": {"delta": round(s["delta_ndcg@10"], 4), "ci95": [round(x, 4) for x in s["ci95"]], "p_value": round(s["p_value"], 4)},
        "tuned_recall@100": round(s["tuned"]["recall@100"], 4),
        "shipped": s.get("shipped", {}).get("model"),
        "best": s.get("best"),
        "minutes": round(s.get("wall_time_s", 0) / 60, 1),
    }
    for system in ("hybrid(base)", "hybrid(tuned)", "merged", "hybrid(merged)"):
        if system in s:
            row[system] = round(s[system]["ndcg@10"], 4)
    for system, d in vs_hybrid.items():
        row[f"{system}_vs_hybrid(base)"] = {"delta": round(d["delta"], 4), "ci95": [round(x, 4) for x in d["ci95"]],
                                            "p_value": round(d["p_value"], 4)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default=str(ROOT.parent / "shared" / "datasets" / "scifact"), help="BEIR folder")
    parser.add_argument("--labels", default="0,50,200,all", help="comma-separated label counts; 'all' = every training query")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_labels"), help="folder of the runs and their YAMLs")
    parser.add_argument("--seed", type=int, default=42, help="which training queries are labelled")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()

    benchmark = Path(args.benchmark).resolve()
    if not (benchmark / "corpus.jsonl").is_file():
        sys.exit(f"bench_labels: {benchmark}: not a BEIR folder (no corpus.jsonl)")
    counts = []
    for item in args.labels.split(","):
        item = item.strip()
        if item != "all" and not (item.isdigit()):
            sys.exit(f"bench_labels: --labels: '{item}' is not a count or 'all'")
        counts.append(sys.maxsize if item == "all" else int(item))
    runs = Path(args.runs).resolve()
    rows = []
    for n in counts:
        config, n_queries = point_config(n, benchmark, runs, args.seed)
        print(f"bench_labels: {n_queries} labelled queries: embedtune run {config}", file=sys.stderr)
        rows.append(point_row(n_queries, run_point(config)))
        print(f"  tuned {rows[-1]['tuned']:.4f}, hybrid(tuned) {rows[-1].get('hybrid(tuned)', float('nan')):.4f}, "
              f"shipped {rows[-1]['shipped']}, {rows[-1]['minutes']} min", file=sys.stderr)
    if RESULTS.is_file():
        earlier = json.loads(RESULTS.read_text())
        if earlier.get("benchmark") == benchmark.name and earlier.get("seed") == args.seed:
            rows = merge_points(earlier["points"], rows)
    summary = {"benchmark": benchmark.name, "split": "test", "metric": "ndcg@10", "seed": args.seed, "points": rows}
    if not args.no_write:
        from embedtune.io import atomic_write_json

        print(f"wrote {atomic_write_json(RESULTS, summary)}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
