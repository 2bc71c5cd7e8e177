"""The one base class for mistakes a user can fix (bad file, option, or mismatched inputs).

The CLI prints any `UserError` as one line on stderr and exits with code 2; everything else is a
bug and keeps its traceback. Library callers catch `UserError` to tell the two apart.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave (file, option, combination); the message says what to do."""
