"""The typer app and what every command shares: error handling, logging, JSON output (the
shared options themselves are in :mod:`.options`).

Command modules (``data_cmd``, ``eval_cmd``...) register themselves on :data:`app`. They only
compose stage functions; no stage module imports the CLI.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from typing import Any, Callable

import typer
from rich.logging import RichHandler

from ..errors import EmbedtuneError
from ..progress import console, quiet_library_bars


def _flags_show_no_type() -> None:
    """typer (0.29) writes ``<bool>`` after every flag in --help, as if ``--json`` took a value;
    a flag takes none. Patched at the one method that renders it, and only if it is there."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    render = getattr(option, "display_type_rich", None)
    if render is None:
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202
        return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else render(self, ctx)

    option.display_type_rich = display_type_rich


_flags_show_no_type()

app = typer.Typer(
    name="embedtune",
    help="Fine-tune a retrieval embedding model for your domain: mine -> train -> select -> index -> eval -> export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """embedtune's log lines go through rich on stderr (the progress display's console); the
    libraries' own bars and chatter are kept off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_library_bars()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("embedtune")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("sentence_transformers", "transformers", "datasets", "faiss", "numba", "httpx", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def emit_json(obj: Any) -> None:
    """Print one JSON object as the last line of stdout (for scripts and CI)."""
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: user errors become one red line and their exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging(bool(kwargs.get("verbose")), bool(kwargs.get("quiet")))
        try:
            return fn(*args, **kwargs)
        except EmbedtuneError as err:
            console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/] -- completed artifacts are kept; re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def without_none(d: dict) -> dict:
    """Flags the user did not pass (None), also inside nested sections, are left to the YAML/defaults."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = without_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def use_cache_dir(folder) -> None:  # noqa: ANN001
    """``--cache-dir`` for commands whose stages take the default cache: the default is
    ``$EMBEDTUNE_CACHE``, so the option sets it for this process."""
    os.environ["EMBEDTUNE_CACHE"] = str(folder)
