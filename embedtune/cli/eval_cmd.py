"""`embedtune eval` -- not built yet."""

from ..errors import NotBuiltError
from .app import app, command


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def eval_command() -> None:
    """(not built yet) -- see the project's open issues."""
    raise NotBuiltError("'embedtune eval' is not built yet")
