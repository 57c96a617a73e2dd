"""Command-line verbs. Each module has ``register(verbs)`` adding its sub-parser(s) with a ``handler``.

Handlers return an exit status; they raise :class:`CommandError` (or a library ``DataError``) for
bad input, which ``arcface.cli.main`` prints as one line before exiting with status 2.
"""

from __future__ import annotations

__all__ = ["CommandError"]


class CommandError(Exception):
    """A user-facing error: reported as one line on stderr, exit status 2."""
