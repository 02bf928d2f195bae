"""The trainer's checkpoints: which one to resume from, whether it is final, and clearing them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .config import TrainConfig

log = logging.getLogger("embedtune")


def trainer_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """A checkpoint's trainer state, or None when the checkpoint is incomplete. The trainer writes
    trainer_state.json last (after weights, optimizer, scheduler and RNG states), with a plain
    open/write: a missing or cut-short state file means the run died while saving."""
    try:
        return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None



def is_final_step(state: dict[str, Any]) -> bool:
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]



def last_checkpoint(ckpt_dir: Path, *, drop_incomplete: bool = False) -> str | None:
    """The newest complete checkpoint in ``ckpt_dir``. transformers' ``get_last_checkpoint`` takes
    the newest folder even when a kill cut its saving short, and resuming from it then fails; with
    ``drop_incomplete`` such folders are removed so the trainer saves them afresh."""
    if not ckpt_dir.is_dir():
        return None
    steps = []
    for path in ckpt_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        if trainer_state(path) is not None:
            return str(path)
        if drop_incomplete:
            log.warning("%s was cut short while being saved: removed, resuming from the one before", path)
            shutil.rmtree(path)
    return None



def drop_checkpoints(work: Path, cfg: TrainConfig) -> None:
    if not cfg.keep_checkpoints and (work / "checkpoints").is_dir():
        shutil.rmtree(work / "checkpoints")
