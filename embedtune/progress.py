"""One progress display for every long step (encoding, mining, generating queries, training,
indexing, evaluation): rich bars on the shared stderr console, so ``--json`` keeps stdout clean.

A step opened while another is shown (the dev evaluation inside training, say) becomes a second
line of the same display: rich allows one live display at a time. Library bars are kept off:
embedtune drives sentence-transformers and the trainer with their own bars disabled, and
``quiet_library_bars`` sets ``TQDM_DISABLE`` for the few tqdm bars a library gives no switch for
(sentence-transformers' "Computing widget examples").
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

# Everything human-readable goes to stderr: with --json the last stdout line is the JSON object.
console = Console(stderr=True)
_live: Progress | None = None


class Step:
    """A handle on one line of the display: ``advance`` it, or say something on it (``note``)."""

    def __init__(self, bar: Progress | None, task: int | None) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, info=text)

    def update(self, *, completed: float | None = None, total: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total)


def quiet_library_bars() -> None:
    os.environ["TQDM_DISABLE"] = "1"


@contextmanager
def step(description: str, total: float | None, *, enabled: bool = True) -> Iterator[Step]:
    """Show ``description`` with a bar of ``total`` units (None: a spinner-like bar) while the
    block runs; a no-op handle when not ``enabled``."""
    global _live
    if not enabled:
        yield Step(None, None)
        return
    if _live is not None:  # nested: a line of the display already shown
        task = _live.add_task(description, total=total, info="")
        try:
            yield Step(_live, task)
        finally:
            _live.remove_task(task)
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)
    _live = bar
    try:
        with bar:
            task = bar.add_task(description, total=total, info="")
            yield Step(bar, task)
    finally:
        _live = None


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """``items`` with a bar that advances per item."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    with step(description, total, enabled=enabled) as s:
        for item in items:
            yield item
            s.advance()
