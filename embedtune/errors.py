"""Errors that reach the user as one line and a documented exit code.

Every failure caused by the user's input (files, configs, models, indexes) is raised as a
subclass of :class:`EmbedtuneError`. The CLI catches them, prints ``str(err)`` on one line and
exits with ``err.exit_code`` -- never a traceback. Anything else is a bug in embedtune.

Exit codes (also in the README):

==  =========================================================
0   success
1   unexpected internal error (a bug: please report it)
2   command-line usage error (unknown option, missing argument)
3   bad input data (corpus, queries, qrels, pairs files)
4   bad configuration (YAML / flags)
5   model not available or unsafe to load
6   index missing, corrupt, or not matching the model
7   run folder belongs to another config / is inconsistent
130 interrupted (Ctrl-C)
==  =========================================================
"""

from __future__ import annotations


class EmbedtuneError(Exception):
    """Base class: a problem the user can fix. ``str()`` is the one-line message."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        file: object | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"field '{self.field}': " if self.field is not None else ""
        # Keep it to one line whatever the message holds.
        return f"{where}{field}{self.message}".replace("\n", " ")


class InputError(EmbedtuneError):
    """A data file (corpus, queries, qrels, pairs) is missing or malformed."""

    exit_code = 3


class ConfigError(EmbedtuneError):
    """A config file or flag has an unknown key or a wrong value."""

    exit_code = 4


class ModelError(EmbedtuneError):
    """A model cannot be found, or its files are unsafe or incomplete."""

    exit_code = 5


class IndexMismatchError(EmbedtuneError):
    """An index is missing, corrupt, or was built with another model."""

    exit_code = 6


class RunDirError(EmbedtuneError):
    """A run folder was made by another config or is inconsistent."""

    exit_code = 7


def first_line(err: BaseException) -> str:
    """The first line of a library's own message (or its type when it has none), for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
