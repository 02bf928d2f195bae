"""`embedtune data inspect|download`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..corpus import beir_splits
from . import options as opt
from .app import app, command, console, emit_json

data_app = typer.Typer(help="Look at datasets before training on them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect", cls=opt.renamed(max_length="--max-seq-length"))
@command
def inspect_command(
    path: Path = typer.Argument(..., help="BEIR folder, corpus (.jsonl/.csv/.parquet/folder of .txt/.md) or pairs .jsonl."),
    model: str = typer.Option("minilm", "--model", "-m", help=opt.MODEL_HELP + " Its tokenizer measures lengths."),
    max_seq_length: int = typer.Option(None, "--max-seq-length", help="The token limit truncation is checked against (default: the model's)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse documents with neither title nor text (default: report them)."),
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Counts, token-length statistics, empty and duplicate documents, and what the model would truncate."""
    from ..inspection import inspect_path
    from ..models import load_tokenizer

    tokenizer, model_max = load_tokenizer(model)
    summary = inspect_path(path, tokenizer, max_seq_length or model_max, strict=strict)
    _print_summary(summary)
    if as_json:
        emit_json(summary)


def _print_summary(s: dict) -> None:
    table = Table(title=f"{s['kind']}: {s['path']}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    if "corpus" in s:
        c = s["corpus"]
        table.add_row("documents", f"{c['documents']:,}")
        table.add_row("empty documents (no title, no text)", f"{c['empty_documents']:,}"
                      + (f" ({', '.join(c['empty_document_ids'][:3])}{', ...' if c['empty_documents'] > 3 else ''})" if c["empty_documents"] else ""))
        table.add_row("duplicate texts", f"{c['duplicate_texts']:,}")
        t = c["tokens"]
        table.add_row("doc tokens mean / p50 / p90 / max", f"{t['mean']:.0f} / {t['p50']:.0f} / {t['p90']:.0f} / {t['max']:,}")
        table.add_row(f"docs truncated at {c['max_length']} tokens", f"{c['truncated_at_max_length']:,} ({c['truncated_tokens']:,} tokens lost)")
    if "queries" in s:
        q = s["queries"]
        table.add_row("queries", f"{q['count']:,}")
        table.add_row("query tokens mean / max", f"{q['tokens']['mean']:.1f} / {q['tokens']['max']}")
        for split, info in s.get("splits", {}).items():
            table.add_row(f"split '{split}'", f"{info['queries']:,} queries with qrels, {info['judgements']:,} judgements, scores {info['scores']}")
    if s["kind"] == "pairs":
        table.add_row("pairs", f"{s['pairs']:,}")
        table.add_row("unique queries", f"{s['unique_queries']:,}")
        table.add_row("pairs with negatives", f"{s['with_negatives']:,}")
        table.add_row("positives truncated", f"{s['positives_truncated_at_max_length']:,}")
    console.print(table)


@data_app.command("download")
@command
def download_command(
    name: str = typer.Argument(..., help="BEIR dataset name, e.g. scifact, nfcorpus, fiqa."),
    dest: Path = typer.Option(Path("data"), "--dest", help="Folder that receives <dest>/<name>/."),
    url: str = typer.Option(None, "--url", help="Zip URL (default: the public BEIR mirror)."),
    sha256: str = typer.Option(None, "--sha256", help="Expected sha256 of the zip; checked when given."),
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Download a public BEIR dataset (needs internet), verify it, and unpack it in BEIR layout."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from ..download import download_beir

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=console, disable=quiet or as_json) as bar:
        task = bar.add_task(f"downloading {name}", total=None)
        folder = download_beir(name, dest, url=url, sha256=sha256, progress=lambda done, total: bar.update(task, completed=done, total=total or None))
    splits = beir_splits(folder)
    console.print(f"[green]ready:[/] {folder} (splits: {', '.join(splits)})")
    if as_json:
        emit_json({"dataset": name, "folder": str(folder), "splits": list(splits)})
