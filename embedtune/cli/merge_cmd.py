"""`embedtune merge`: interpolate tuned weights with their base (WiSE-FT / LM-Cocktail)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from . import options as opt
from .app import app, command, console, emit_json


@app.command("merge")
@command
def merge_command(
    base: str = typer.Option("minilm", "--base", help=opt.MODEL_HELP + " The model the tuned ones started from."),
    models: List[str] = typer.Option(..., "--model", "-m", help="A tuned model folder; repeat to average several (same base). A query-side model merges alone: its query side moves toward the base's."),
    alpha: float = typer.Option(..., "--alpha", help="0 = the base, 1 = the (mean) tuned model, between = interpolation."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged sentence-transformers model (safetensors)."),
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Merge tuned weights with their base: theta = (1 - alpha) * base + alpha * mean(tuned)."""
    from ..config import ModelConfig
    from ..merging import merge_folders
    from ..models import model_fingerprint

    path = merge_folders(ModelConfig(name=base), [ModelConfig(name=m) for m in models], alpha, out)
    fingerprint = model_fingerprint(path)
    console.print(f"merged {len(models)} model(s) with {base} at alpha {alpha:g} -> {path} (fingerprint {fingerprint[:12]})")
    if as_json:
        emit_json({"out": str(path), "alpha": alpha, "base": base, "models": models, "model_sha256": fingerprint})
