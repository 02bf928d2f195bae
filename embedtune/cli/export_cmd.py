"""`embedtune export` -- not built yet."""

from ..errors import NotBuiltError
from .app import app, command


@app.command("export", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def export_command() -> None:
    """(not built yet) -- see the project's open issues."""
    raise NotBuiltError("'embedtune export' is not built yet")
