"""Error types that decide how the command line answers.

`UserInputError` is bad input (a missing variable, a wrong path, a bad config
value): the CLI prints its message on one line and exits with code 2, without a
traceback. `TrainingDiverged` is a run that failed on its own (not the user's
input): one line, exit code 1. Anything else is an internal error and exits
with code 1.

They live here, apart from the code that raises them, so the command line can
answer them without importing JAX.
"""

from __future__ import annotations


# Exit codes of every command: 0 ok, 1 internal error, 2 bad input (one line), 3 a quality gate failed.
GATE_FAILED_EXIT = 3   # `gate` (and a pipeline's `gate` stage): the rules were checked and a required one failed


class UserInputError(Exception):
    """Bad input that the user can fix; the message names the problem and the remedy."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps. The CLI prints the one-line message and exits 1."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def validation_message(source: str, error) -> str:
    """A pydantic `ValidationError` as one line: `SOURCE: dotted.key: message`, the first problem named.

    An unknown key reads "unknown key" (schemas forbid them: a typo); other messages show the offending
    value. Kept here, beside `UserInputError`, so every reader of a YAML file words its errors alike.
    """
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = first["msg"]
        if first["type"] != "value_error" and "input" in first and not isinstance(first["input"], dict):
            message += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    return f"{source}: {location}: {message}{suffix}"
