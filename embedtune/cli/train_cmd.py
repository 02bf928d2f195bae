"""`embedtune train` -- not built yet."""

from ..errors import NotBuiltError
from .app import app, command


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def train_command() -> None:
    """(not built yet) -- see the project's open issues."""
    raise NotBuiltError("'embedtune train' is not built yet")
