"""How the command line reports a user's mistake: one `error: ...` line on stderr, exit code 2.

Missing files, files of the wrong format (not COCO, not a bundle), unknown classes and bad
option values surface as OSError or ValueError (BundleError is one) from the library; the
commands turn them into that line instead of a traceback. Anything else is a bug and keeps its
traceback.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import typer

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print the first line of `message` as `error: ...` on stderr and exit with `code`."""
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    typer.echo(f"error: {lines[0] if lines else 'unknown error'}", err=True)
    raise typer.Exit(code=code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn OSError and ValueError raised inside the block into `fail(...)`."""
    try:
        yield
    except (OSError, ValueError) as error:
        fail(str(error) or type(error).__name__)


def check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    """Fail unless `value` of `option` is one of `choices`."""
    if value not in choices:
        fail(f"{option} must be one of {', '.join(choices)}, got {value!r}")
