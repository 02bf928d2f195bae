"""Command-line interface: ``embedtune <stage> ...``. See ``embedtune --help``."""

from __future__ import annotations

from .app import app

# Importing a command module registers its commands on ``app``.
from . import data_cmd, mine_cmd, train_cmd, index_cmd, eval_cmd, export_cmd, merge_cmd, run_cmd  # noqa: E402,F401


def main() -> None:
    from ..allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()
    app()


__all__ = ["app", "main"]
