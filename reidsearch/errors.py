"""User-facing errors: one line naming the file, key or image, printed without a traceback."""

from __future__ import annotations


class ReidSearchError(Exception):
    """An error caused by the user's input (a file, a key, an image), not by a bug.

    The CLI prints ``str(err)`` on one line and exits with code 2.
    """


class ConfigError(ReidSearchError):
    """A config or search-space file is malformed (unknown key, bad value, empty range)."""


class DatasetError(ReidSearchError):
    """A dataset folder or file does not match its layout (missing folder, unparsable name)."""
