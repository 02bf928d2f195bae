"""`embedtune index build|update` and `embedtune search` -- not built yet."""

import typer

from ..errors import NotBuiltError
from .app import app, command

index_app = typer.Typer(help="Build or update a search index over a corpus (not built yet).", no_args_is_help=True)
app.add_typer(index_app, name="index")
_extra = {"allow_extra_args": True, "ignore_unknown_options": True}


@index_app.command("build", context_settings=_extra)
@command
def build_command() -> None:
    """(not built yet) Encode a corpus and write a search index."""
    raise NotBuiltError("'embedtune index build' is not built yet")


@index_app.command("update", context_settings=_extra)
@command
def update_command() -> None:
    """(not built yet) Re-encode only new or changed passages of an index."""
    raise NotBuiltError("'embedtune index update' is not built yet")


@app.command("search", context_settings=_extra)
@command
def search_command() -> None:
    """(not built yet) Query an index built by 'embedtune index build'."""
    raise NotBuiltError("'embedtune search' is not built yet")
