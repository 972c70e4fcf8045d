"""The one exception the data layer raises for bad input on disk."""

from __future__ import annotations


class DataError(ValueError):
    """A file or table under a dataset root is missing, malformed or inconsistent.

    The message always names the offending file (or directory) and what was expected there.
    """
