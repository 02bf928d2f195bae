"""`embedtune run` and `embedtune demo` -- not built yet."""

from ..errors import NotBuiltError
from .app import app, command

_extra = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("run", context_settings=_extra)
@command
def run_command() -> None:
    """(not built yet) Run the whole pipeline from a YAML config."""
    raise NotBuiltError("'embedtune run' is not built yet")


@app.command("demo", context_settings=_extra)
@command
def demo_command() -> None:
    """(not built yet) Run the pipeline on the embedded default corpus."""
    raise NotBuiltError("'embedtune demo' is not built yet")
