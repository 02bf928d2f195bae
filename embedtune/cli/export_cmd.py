"""`embedtune export`: a run folder -> a folder to ship (model, model card, index, USAGE.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import options as opt
from .app import app, command, console, emit_json


@app.command("export")
@command
def export_command(
    run_dir: Path = typer.Argument(..., help="Pipeline run folder (train/, index/, eval/, mine/), a 'train --out' folder, or a model folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder to write (must be new or empty, unless --overwrite)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also export the transformer to ONNX (model/onnx/model.onnx), checked against torch.", show_default=False),
    int8: bool = typer.Option(False, "--int8", help="Also write model-int8/: the transformer as an int8 ONNX graph for CPU serving, checked against torch.", show_default=False),
    benchmark: str = typer.Option(None, "--benchmark", "-b", help="BEIR folder[:split] to measure the int8 model's nDCG@10 against torch on (a sample of its queries)."),
    vector_db: str = typer.Option(None, "--vector-db", help="Also write the index's passages with their vectors into an embedded vector database: qdrant (OUT/qdrant/)."),
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Ship a tuned model: safetensors folder + model card, index, ONNX (optional), usage snippets."""
    from ..config import build_config
    from ..export import ExportConfig, export_run

    if benchmark and not int8:
        raise typer.BadParameter("--benchmark measures the int8 model: pass --int8 too", param_hint="--benchmark")
    summary = export_run(run_dir, out, build_config(ExportConfig, {"onnx": onnx, "int8": int8, "benchmark": benchmark, "vector_db": vector_db}, "command-line options"), overwrite=overwrite)
    if summary["skipped"]:
        console.print(f"[green]already complete[/] -- {out} holds this export (same run and settings); pass --overwrite to redo it")
    table = Table(title=f"export {run_dir} -> {out}", show_header=True)
    table.add_column("what")
    table.add_column("value")
    table.add_row("model", f"{out / 'model'} ({summary['weights_files']} safetensors file(s), fingerprint {summary['model_sha256'][:12]})")
    table.add_row("embeddings check", f"reloaded with plain sentence-transformers: min cosine {summary['check_min_cosine']:.6f}")
    if "index" in summary:
        i = summary["index"]
        table.add_row("index", f"{out / 'index'} ({i['count']:,} passages, {i['backend']})")
    if summary.get("onnx"):
        o = summary["onnx"]
        table.add_row("onnx", f"{o['path']} (min cosine vs torch {o['min_cosine']:.6f} on {o['texts']} texts)")
    if summary.get("int8"):
        q = summary["int8"]
        check = f"cosine to torch mean {q['mean_cosine']:.4f} / min {q['min_cosine']:.4f}"
        if q.get("benchmark"):
            b = q["benchmark"]
            check += f"; nDCG@10 {b['ndcg@10_int8']:.4f} vs torch {b['ndcg@10_torch']:.4f} ({b['ndcg@10_delta']:+.4f}, p {b['p_value']:.3f}, {b['queries']} queries of {b['dataset']})"
        table.add_row("int8", f"{out / q['path']} ({q['bytes'] / 1e6:.0f} MB; {check})")
    if summary.get("vector_db"):
        v = summary["vector_db"]
        table.add_row("vector database", f"{out / v['path']} (Qdrant local, collection {v['collection']}, {v['count']:,} passages)")
    table.add_row("model card / usage", f"{out / 'model' / 'README.md'}, {out / 'USAGE.md'}")
    for what in summary["missing"]:
        table.add_row("[yellow]missing in run folder[/]", what)
    for what in summary["not_exported"]:
        table.add_row("[yellow]not exported[/]", what)
    console.print(table)
    if as_json:
        emit_json(summary)
