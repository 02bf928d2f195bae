"""The training curve: loss and dev nDCG@10 per step, as JSON and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_with
from .dev import NDCG_KEY


def training_curve(log_history: list[dict], base_dev: float | None = None) -> dict[str, Any]:
    """Loss and dev nDCG@10 per step from the trainer's log history (step 0: the base model)."""
    loss = [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate")} for e in log_history if "loss" in e]
    dev = [{"step": 0, "ndcg@10": base_dev}] if base_dev is not None else []
    dev += [{"step": e["step"], "ndcg@10": e[NDCG_KEY]} for e in log_history if NDCG_KEY in e]
    steps = max((e.get("step", 0) for e in log_history), default=0)
    return {"steps": steps, "loss": loss, "dev": dev}



def plot_curve(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss (left axis) and dev nDCG@10 (right axis) per step, rounds one after the
    other (dotted lines where a round starts), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twinx()
    offset = 0
    for r, curve in enumerate(rounds):
        if r:
            ax.axvline(offset, color="grey", linestyle=":")
        if curve["loss"]:
            ax.plot([offset + p["step"] for p in curve["loss"]], [p["loss"] for p in curve["loss"]], color="tab:blue")
        if curve["dev"]:
            ax2.plot([offset + p["step"] for p in curve["dev"]], [p["ndcg@10"] for p in curve["dev"]], "o-", color="tab:orange")
        offset += curve["steps"]
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2.set_ylabel("dev nDCG@10", color="tab:orange")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
