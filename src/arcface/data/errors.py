"""The error every data reader raises for bad input: it names the file (and offset or line)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A corrupt, truncated, missing or malicious input file.

    The message says which file, where in it (byte offset, line, record key) and what was wrong,
    so the command line can print it as one line and exit non-zero.
    """
