"""The ``arcface`` command: ``arcface <verb> ...``. Later issues add train, eval, clean, invert, ...

Each verb registers a sub-parser and a handler; ``main(argv)`` parses, configures logging once and
returns the handler's exit status, so tests call ``main([...])`` in-process.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A user-facing error: reported as one line on stderr, exit status 2."""


def _cmd_heads(args: argparse.Namespace) -> int:
    from .heads import create_head, list_heads

    shown = ("scale", "m1", "m2", "m3", "sub_centers", "bias")
    for name in list_heads():
        hparams = create_head(name, num_classes=1, embedding_size=1).hparams()
        detail = ", ".join(f"{key}={hparams[key]}" for key in shown if key in hparams)
        sys.stdout.write(f"{name:<20} {detail}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcface",
        description="Train, evaluate and use face recognition models with additive angular margin losses.",
    )
    parser.add_argument("--version", action="version", version=f"arcface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    heads = verbs.add_parser("heads", help="list the registered margin heads and their default margins")
    heads.set_defaults(handler=_cmd_heads)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except CommandError as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
