"""``arcface heads``: list the registered margin heads and their defaults."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from ..heads import create_head, list_heads

    shown = ("scale", "m1", "m2", "m3", "sub_centers", "bias")
    for name in list_heads():
        hparams = create_head(name, num_classes=1, embedding_size=1).hparams()
        detail = ", ".join(f"{key}={hparams[key]}" for key in shown if key in hparams)
        sys.stdout.write(f"{name:<20} {detail}\n")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("heads", help="list the registered margin heads and their default margins")
    parser.set_defaults(handler=_run)
