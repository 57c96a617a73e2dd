"""``arcface lfw``: the CPU reference recipe end to end (align once, train, verify, print the accuracy)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .common import add_detector_argument

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    from ..recipes.lfw import run_lfw_recipe
    from ..runtime import tune_cpu_allocator

    tune_cpu_allocator()
    summary = run_lfw_recipe(Path(args.out), lfw=args.lfw, detector=args.detector, cache=args.cache, full=args.full, overrides=args.set)
    accuracy = (summary.get("final_eval") or {}).get("pairsDevTest.txt")
    sys.stdout.write(json.dumps(summary) + "\n")
    if accuracy is not None:
        sys.stdout.write(f"pairsDevTest 10-fold accuracy: {100 * accuracy:.2f}% after {summary['training_seconds'] / 60:.1f} min of training\n")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("lfw", help="CPU reference recipe: train on LFW View 1 people, verify on pairsDevTest")
    from ..home import LFW_LOOKUP

    parser.add_argument("--out", default="runs/lfw", help="run folder")
    parser.add_argument("--lfw", metavar="DIR", help=f"LFW folder (images/, pairsDevTest.txt, peopleDevTrain.txt) (default: {LFW_LOOKUP})")
    add_detector_argument(parser)
    parser.add_argument("--cache", help="where the aligned images go (default: <out>/../cache)")
    parser.add_argument("--full", action="store_true", help="the full recipe (60 min of training) instead of the 12-minute one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    parser.set_defaults(handler=_run)
