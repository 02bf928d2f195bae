"""`embedtune train`: fine-tune a model on a mined dataset folder -> DIR/model + manifest."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from . import options as opt
from .app import app, command, console, emit_json, use_cache_dir, without_none


@app.command("train", cls=opt.renamed(data="--mined", short_d="--mined", negatives="--num-negatives", batch_size="--train-batch-size",
                                      short_b="--train-batch-size", lr="--learning-rate"))
@command
def train_command(
    mined: Path = typer.Option(..., "--mined", help="Mined rows: a folder 'embedtune mine' wrote (dataset/ or pairs.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: model/, checkpoints/, training_curve.json/.png, manifest.json."),
    model: opt.Model = None,
    config: opt.Config = None,
    loss: str = typer.Option(None, "--loss", help="mnrl | cached_mnrl | gist | margin_mse | listwise_kl (default mnrl)."),
    num_negatives: int = typer.Option(None, "--num-negatives", "-n", help="Hard negatives per row fed to the loss (default 1)."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the training rows (default 1)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps (overrides --epochs)."),
    train_batch_size: int = typer.Option(None, "--train-batch-size", help="Training rows per step per device (default 32)."),
    learning_rate: float = typer.Option(None, "--learning-rate", help="Peak learning rate (default 2e-5)."),
    max_seq_length: opt.MaxSeqLength = None,
    query_prompt: opt.QueryPrompt = None,
    document_prompt: opt.DocumentPrompt = None,
    batch_size: opt.BatchSize = None,
    precision: str = typer.Option(None, "--precision", help="Training autocast: auto | fp32 | bf16 | fp16 (CUDA)."),
    device: opt.Device = None,
    dev: str = typer.Option(None, "--dev", help="Dev split for evaluation during training, e.g. nfcorpus:dev (default: hold out 10% of the training queries)."),
    side: str = typer.Option(None, "--side", help="both: fine-tune the encoder (default). query: train a query adapter "
                             "only; documents keep the base model's vectors, existing indexes stay valid (try --learning-rate 1e-3 --epochs 20)."),
    rounds: int = typer.Option(None, "--rounds", help="Re-mine negatives with the tuned model and train again (ANCE-style), this many rounds in all."),
    seed: opt.Seed = None,
    cache_dir: opt.CacheDir = None,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard what --out holds and start over."),
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Fine-tune an embedding model (or only its query side) with a contrastive loss on mined hard negatives."""
    # Before sentence-transformers / huggingface_hub are imported: saving a model card must not
    # try the hub (a user who wants it online sets HF_HUB_OFFLINE=0 explicitly).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..config import load_config
    from ..pipeline import remining
    from ..training import TrainConfig, train_model

    overrides = {
        "model": {"name": model, "max_seq_length": max_seq_length, "query_prompt": query_prompt, "document_prompt": document_prompt,
                  "batch_size": batch_size, "device": device},
        "loss": {"name": loss},
        "negatives_per_query": num_negatives,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": train_batch_size,
        "learning_rate": learning_rate,
        "precision": precision,
        "dev": {"source": dev},
        "rounds": rounds,
        "side": side,
        "seed": seed,
    }
    if cache_dir is not None:
        use_cache_dir(cache_dir)
    cfg = load_config(TrainConfig, config, without_none(overrides))
    remine = remining(mined) if cfg.rounds > 1 else None
    manifest = train_model(cfg, mined, out, resume=resume, overwrite=overwrite, remine=remine, progress=not (as_json or quiet))
    if not manifest:  # not the main process of a multi-process run
        return
    summary = _summary(manifest, out)
    _print_summary(summary)
    if as_json:
        emit_json(summary)


def _summary(manifest: dict, out: Path) -> dict:
    m = manifest.get("metrics", {})
    return {
        "out": str(out),
        "model": str(out / "model"),
        "base_dev_ndcg@10": m.get("base_dev_ndcg@10"),
        "best_dev_ndcg@10": m.get("best_dev_ndcg@10"),
        "dev": m.get("dev"),
        "steps": m.get("steps"),
        "train_rows": m.get("train_rows"),
        "seconds": manifest.get("timings", {}).get("total_s"),
    }


def _print_summary(s: dict) -> None:
    table = Table(title=f"train -> {s['model']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("training rows", f"{s['train_rows']:,}" if s["train_rows"] is not None else "-")
    table.add_row("steps", str(s["steps"]))
    if s["best_dev_ndcg@10"] is not None:
        base = s["base_dev_ndcg@10"]
        table.add_row("dev nDCG@10 base -> best", f"{base:.4f} -> {s['best_dev_ndcg@10']:.4f}" if base is not None else f"{s['best_dev_ndcg@10']:.4f}")
        table.add_row("dev", str(s["dev"]))
    if s["seconds"] is not None:
        table.add_row("time", f"{s['seconds']:.0f} s")
    console.print(table)
