"""The one base class of the project's expected errors.

An `Error` means the user asked for something that cannot be done (a bad flag, input, file,
spec or device) and says what was expected and what was given. Commands answer it with one
line, `error: ...` (common/commands/cli.py, `guarded`); anything else is a bug and keeps its
traceback. It derives from ValueError, so code that caught the ValueErrors these used to be
still catches them.
"""
from __future__ import annotations


class Error(ValueError):
    """An expected failure, with a message that names the expected and the given value."""
