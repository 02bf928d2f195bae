"""`embedtune mine` -- not built yet."""

from ..errors import NotBuiltError
from .app import app, command


@app.command("mine", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def mine_command() -> None:
    """(not built yet) -- see the project's open issues."""
    raise NotBuiltError("'embedtune mine' is not built yet")
