"""User-facing errors.

A `UserError` is a mistake the user can fix (bad path, bad value, corrupt file). The CLI prints its message as
one line on stderr and exits with code 2, without a traceback. Anything else is an internal error.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; its message is shown verbatim as one line."""

    exit_code = 2
