"""The project's error types: mistakes in what the user asked for, as opposed to bugs.

    python -c "from gpt2.errors import UserError; raise UserError('train.seq_len=0 must be positive')"

The command line prints a `UserError` (and an OSError about a named path, such as a file that is not
there) as one `error: ...` line and exits with status 2; any other exception is a bug in this project
or below it and keeps its traceback, so it never looks like a user mistake. `UserError` subclasses
ValueError, so callers of the Python API can keep catching ValueError.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad value, option, file content or combination that the user supplied; the message says how to fix it."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class UserNotADirectoryError(UserError, NotADirectoryError):
    """A path the user named should be a directory and is not."""
