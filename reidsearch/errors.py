"""User-facing errors: one line naming the file, key or image, printed without a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class ReidSearchError(Exception):
    """An error caused by the user's input (a file, a key, an image), not by a bug.

    The CLI prints ``str(err)`` on one line and exits with code 2.
    """


class ConfigError(ReidSearchError):
    """A config or search-space file is malformed (unknown key, bad value, empty range)."""


class DatasetError(ReidSearchError):
    """A dataset folder or file does not match its layout (missing folder, unparsable name)."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's (often multi-line) error message, for a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """``a, b, c and 4 more``: a long list of files in a one-line message stays one line."""
    head = ", ".join(list(names)[:shown])
    return f"{head} and {len(names) - shown} more" if len(names) > shown else head
