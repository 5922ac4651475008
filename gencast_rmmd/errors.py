"""Error types that decide how the command line answers.

`UserInputError` is bad input (a missing variable, a wrong path, a bad config
value): the CLI prints its message on one line and exits with code 2, without a
traceback. Anything else is an internal error and exits with code 1.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input that the user can fix; the message names the problem and the remedy."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))
