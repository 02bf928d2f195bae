"""`embedtune eval`: BEIR metrics for one or more models (and BM25), side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import typer
from rich.table import Table

from . import options as opt
from .app import app, command, console, emit_json


@app.command("eval", cls=opt.renamed(data="--benchmark", short_d="--benchmark", top_k="--depth"))
@command
def eval_command(
    models: List[str] = typer.Option([], "--model", "-m", help=opt.MODEL_HELP + " Repeat to compare; the first is the baseline."),
    labels: List[str] = typer.Option([], "--label", help="Display name of each --model, in order."),
    benchmark: str = typer.Option(None, "--benchmark", "-b", help="BEIR folder or name (looked up in ./data and ../shared/datasets)."),
    split: str = typer.Option(None, "--split", help="Qrels split to evaluate (default: test)."),
    bm25: bool = typer.Option(None, "--bm25/--no-bm25", help="Also evaluate BM25 (bm25s)."),
    hybrid: bool = typer.Option(None, "--hybrid/--no-hybrid", help="Add hybrid(<model>) rows: BM25 fused with each model, weight chosen on --fusion-dev-split."),
    fusion_method: str = typer.Option(None, "--fusion-method", help="zscore | minmax | rrf (default: zscore)."),
    bm25_weight: float = typer.Option(None, "--bm25-weight", help="Fixed BM25 weight in [0, 1] for hybrid rows (skips choosing it on dev)."),
    fusion_dev_split: str = typer.Option(None, "--fusion-dev-split", help="Qrels split the fusion weight is chosen on (default: 'dev' when there is one; never the evaluated split)."),
    fusion_rule: str = typer.Option(None, "--fusion-rule", help="How the weight is picked from the dev curve: significant (default: leave 0.5 only on a significant dev gain) | bagged | lcb | argmax."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for metrics.json, report.md and plots (default: runs/eval-<time>)."),
    config: Path = typer.Option(None, "--config", help="YAML with EvalConfig keys; flags override it."),
    query_prompt: opt.QueryPrompt = None,
    document_prompt: opt.DocumentPrompt = None,
    max_seq_length: opt.MaxSeqLength = None,
    batch_size: opt.BatchSize = None,
    precision: opt.Precision = None,
    device: opt.Device = None,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow models that ship their own code."),
    depth: int = typer.Option(None, "--depth", help="How deep each query's ranking is computed (default 1000; recall@1000 needs it)."),
    skip_unknown_ids: opt.SkipUnknownIds = None,
    seed: opt.Seed = None,
    cache_dir: opt.CacheDir = None,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Evaluate models (and BM25, and their --hybrid fusions) on a BEIR benchmark; deltas and paired significance tests."""
    from ..config import deep_merge, load_config, read_yaml
    from ..evaluation import EvalConfig
    from ..evaluation_report import run_evaluation

    base = read_yaml(config) if config else {}
    model_over = {"query_prompt": query_prompt, "document_prompt": document_prompt, "max_seq_length": max_seq_length,
                  "batch_size": batch_size, "precision": precision, "device": device,
                  "trust_remote_code": trust_remote_code or None}
    if models:
        base["models"] = [deep_merge({"name": m}, model_over) for m in models]
    else:
        base["models"] = [deep_merge(m, model_over) for m in base.get("models", [])]
    overrides = {"benchmark": benchmark, "split": split, "bm25": bm25, "depth": depth, "skip_unknown_ids": skip_unknown_ids, "seed": seed,
                 "cache_dir": str(cache_dir) if cache_dir else None, "labels": labels or None,
                 "hybrid": hybrid, "fusion_dev_split": fusion_dev_split, "fusion_rule": fusion_rule,
                 "fusion": {k: v for k, v in {"method": fusion_method, "bm25_weight": bm25_weight}.items() if v is not None}}
    cfg = load_config(EvalConfig, None, deep_merge(base, overrides))
    out = out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    result = run_evaluation(cfg, out, overwrite=overwrite, show_progress=not (as_json or quiet))
    print_table(result["summary"])
    note = " (unchanged results, reused)" if result["skipped"] else ""
    console.print(f"report: {out}/report.md{note}  [{time.perf_counter() - t0:.1f} s]")
    if as_json:
        summary = dict(result["summary"])
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        summary["out"] = str(out)
        emit_json(summary)


def print_table(summary: dict) -> None:
    from ..evaluation import METRICS

    names = list(summary["models"])
    table = Table(title=f"{summary['dataset']} / {summary['split']} ({summary['queries']} queries)")
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    for n in names[1:]:
        table.add_column(f"Δ {n}", justify="right")
        table.add_column("p", justify="right")
    for m in METRICS:
        row = [m] + [f"{summary['models'][n][m]:.4f}" for n in names]
        for n in names[1:]:
            d = summary["deltas"][n][m]
            style = "green" if d["delta"] > 0 and d["p_value"] < 0.05 else "red" if d["delta"] < 0 and d["p_value"] < 0.05 else ""
            row += [f"[{style}]{d['delta']:+.4f}[/]" if style else f"{d['delta']:+.4f}", f"{d['p_value']:.3f}"]
        table.add_row(*row)
    console.print(table)
    for n, wtl in summary.get("wins_ties_losses", {}).items():
        console.print(f"{n} vs {names[0]}, per-query ndcg@10: {wtl['wins']} wins / {wtl['ties']} ties / {wtl['losses']} losses")
    for baseline, deltas in summary.get("deltas_vs", {}).items():
        for n, d in deltas.items():
            r = d["ndcg@10"]
            console.print(f"{n} vs {baseline}: ndcg@10 {r['delta']:+.4f} (95% CI [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}], p = {r['p_value']:.4f})")
    for n, f in summary.get("fusion", {}).items():
        c = f["config"]
        console.print(f"{n}: {c['method']} fusion, BM25 weight {c['bm25_weight']:.2f}, {f['source']}")
    if len(names) > 1:
        console.print(f"best ndcg@10: {summary['best']}")
