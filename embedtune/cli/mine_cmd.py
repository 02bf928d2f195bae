"""`embedtune mine`: hard negatives for (query, positive) pairs -> a mined dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import options as opt
from .app import app, command, console, emit_json


@app.command("mine")
@command
def mine_command(
    pairs: str = typer.Option(None, "--pairs", "-p", help="Pairs source: 'dataset:split' (BEIR qrels, e.g. scifact:train or path/to/beir:train,dev), a pairs .jsonl (query, positive, optional negatives), or 'self' (derive pairs from the corpus)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the mined rows (dataset/, pairs.jsonl), manifest.json, report.md."),
    model: opt.Model = None,
    corpus: str = typer.Option(None, "--corpus", "-c", help="Candidate documents (BEIR folder, .jsonl/.csv/.parquet, folder of .txt/.md). Default: the BEIR folder of --pairs."),
    config: opt.Config = None,
    num_negatives: opt.NumNegatives = None,
    range_min: int = typer.Option(None, "--range-min", help="Skip this many best-ranked non-positive candidates (default 0)."),
    range_max: int = typer.Option(None, "--range-max", help="Consider non-positive candidates up to this rank (default 50)."),
    sampling: str = typer.Option(None, "--sampling", help="top | random (default top)."),
    relative_margin: float = typer.Option(None, "--relative-margin", help="Drop candidates scoring above pos - |pos| x margin (default 0.05)."),
    absolute_margin: float = typer.Option(None, "--absolute-margin", help="Drop candidates scoring above pos - margin."),
    max_score: float = typer.Option(None, "--max-score", help="Drop candidates scoring above this."),
    margin_against: str = typer.Option(None, "--margin-against", help="weakest | strongest: the query's positive the margins compare with (default weakest; strongest keeps hard negatives on densely judged data, but on NFCorpus they trained worse than random ones)."),
    retriever: str = typer.Option(None, "--retriever", help="dense | bm25 | hybrid (dense + BM25, reciprocal-rank fusion)."),
    cross_encoder: str = typer.Option(None, "--cross-encoder", help="Local CrossEncoder folder: re-scores candidates, drops likely false negatives, stores teacher scores."),
    query_prompt: opt.QueryPrompt = None,
    document_prompt: opt.DocumentPrompt = None,
    max_seq_length: opt.MaxSeqLength = None,
    batch_size: opt.BatchSize = None,
    precision: opt.Precision = None,
    device: opt.Device = None,
    seed: opt.Seed = None,
    skip_unknown_ids: opt.SkipUnknownIds = None,
    cache_dir: opt.CacheDir = None,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Mine hard negatives with positive-aware filtering (NV-Retriever) and write a dataset the trainer reads."""
    from ..config import load_config
    from ..mining import MineConfig, mine_hard_negatives

    overrides = {
        "pairs": pairs,
        "corpus": corpus,
        "model": {k: v for k, v in {"name": model, "precision": precision, "query_prompt": query_prompt, "document_prompt": document_prompt,
                                    "max_seq_length": max_seq_length, "batch_size": batch_size, "device": device}.items() if v is not None} or None,
        "num_negatives": num_negatives,
        "range_min": range_min,
        "range_max": range_max,
        "sampling": sampling,
        "relative_margin": relative_margin,
        "absolute_margin": absolute_margin,
        "max_score": max_score,
        "margin_against": margin_against,
        "retriever": retriever,
        "cross_encoder": {"path": cross_encoder} if cross_encoder else None,
        "seed": seed,
        "skip_unknown_ids": skip_unknown_ids,
        "cache_dir": str(cache_dir) if cache_dir else None,
    }
    cfg = load_config(MineConfig, config, overrides)
    summary = mine_hard_negatives(cfg, out, overwrite=overwrite, show_progress=not (as_json or quiet))
    if summary.get("skipped"):
        console.print(f"[green]already complete[/] -- {out} holds this run (same config and inputs); pass --overwrite to redo it")
    else:
        _print_summary(summary, out)
    if as_json:
        emit_json({k: v for k, v in summary.items() if k != "timings"} | {"timings": summary.get("timings", {})})


def _print_summary(s: dict, out: Path) -> None:
    table = Table(title=f"mined negatives -> {out}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("queries / rows", f"{s['queries']:,} / {s['pairs']:,}")
    table.add_row("candidate pool", f"{s['pool_documents']:,} documents")
    table.add_row(f"rows with {s['num_negatives']} negatives", f"{s['rows_full']:,}")
    table.add_row("rows with fewer / none (kept)", f"{s['rows_short']:,} / {s['rows_without_negatives']:,}")
    for name, value in s["filter_counts"].items():
        table.add_row(f"filter: {name}", f"{value:,}")
    if s.get("positive_score_mean") is not None and s.get("negative_score_mean") is not None:
        table.add_row("mean score positive / negative", f"{s['positive_score_mean']:.3f} / {s['negative_score_mean']:.3f}")
    table.add_row("time", f"{s['timings'].get('total', 0):.1f} s")
    console.print(table)
    console.print(f"report: {out / 'report.md'}")
