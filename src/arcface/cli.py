"""The ``arcface`` command: ``arcface <verb> ...``.

``main(argv)`` parses, configures logging once and returns the handler's exit status, so tests call
``main([...])`` in-process. Bad input (missing or corrupt files, bad values) ends with a one-line
message on stderr and exit status 2, never a traceback; what was already written stays.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from . import __version__
from .commands import CommandError
from .commands import clean as clean_commands
from .commands import data as data_commands
from .commands import eval as eval_commands
from .commands import export as export_commands
from .commands import heads as heads_commands
from .commands import invert as invert_commands
from .commands import lfw as lfw_commands
from .commands import models as models_commands
from .commands import train as train_commands
from .commands import use as use_commands
from .commands.common import ArcfaceParser

__all__ = ["main", "build_parser", "CommandError"]

log = logging.getLogger("arcface")


def build_parser() -> argparse.ArgumentParser:
    parser = ArcfaceParser(
        prog="arcface",
        description="Train, evaluate and use face recognition models with additive angular margin losses. "
        "-v / -q work before or after the verb; `arcface VERB --help` shows each verb's options and defaults.",
    )
    parser.add_argument("--version", action="version", version=f"arcface {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")  # sub-parsers are ArcfaceParsers too
    for module in (clean_commands, data_commands, eval_commands, export_commands, heads_commands, invert_commands, lfw_commands,
                   models_commands, train_commands, use_commands):
        module.register(verbs)
    return parser


def _option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> its --flag over the whole command tree, to speak of flags in messages."""
    names: dict[str, str] = {}
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            long = [option for option in action.option_strings if option.startswith("--")]
            if long and action.dest not in (argparse.SUPPRESS, "help"):
                names.setdefault(action.dest, long[0])
    return names


def flag_spelling(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message speaks Python (``aligned=True``, ``batch_size must be``); say the flags instead."""
    for dest, flag in _option_names(parser).items():
        name = re.escape(dest)
        message = re.sub(rf"(?<![\w./\\$-]){name}=(True|False)\b", flag, message)
        message = re.sub(rf"(?<![\w./\\$-]){name}=(?=[A-Z]+\b)", f"{flag} ", message)  # detector=PATH
        if "_" in dest:  # a Python identifier, unless it is part of a path or a longer name
            message = re.sub(rf"(?<![\w./\\$-]){name}(?![\w(=/\\-]|\.\w)", flag, message)
        else:  # a plain word ("workers") is a flag only as the subject of a check: "workers must be >= 1"
            message = re.sub(rf"(^|[:;] ){name}(?= must )", rf"\g<1>{flag}", message)
    return message


def _one_line(message: str) -> str:
    """An error raised in a DataLoader worker arrives with the worker's traceback in its message:
    keep the last line, which is the error itself."""
    if "Traceback" not in message:
        return message
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    last = lines[-1]
    return last.split(": ", 1)[1] if last.startswith(("arcface.", "ValueError", "OSError")) and ": " in last else last


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose, args.quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # on stderr: stdout carries results only (--json documents stay parseable)
    handler = getattr(args, "handler", None)
    if handler is None:
        (getattr(args, "verb_parser", None) or parser).print_help()
        return 0
    from .data.errors import DataError

    try:
        return handler(args)
    except (CommandError, DataError, ValueError) as error:
        log.debug("details", exc_info=True)
        log.error("%s", flag_spelling(_one_line(str(error)), parser))
        return 2
    except OSError as error:
        log.error("%s: %s", getattr(error, "filename", None) or "I/O error", error.strerror or error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; files already written are kept (re-run to resume where supported)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
