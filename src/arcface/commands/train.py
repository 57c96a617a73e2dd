"""``arcface train CONFIG.yaml --out RUN_DIR [--set key=value ...] [--overwrite]`` and ``arcface train --resume RUN_DIR``.

One training writes a run folder at a time (a second one exits 2 naming the holder's pid); a new run
refuses a folder holding another run unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import CommandError

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from ..runtime import tune_cpu_allocator
    from ..train.config import load_config
    from ..train.loop import TrainingError, train

    tune_cpu_allocator()
    if args.resume:
        if args.config:
            raise CommandError("--resume continues a run with the config saved in its checkpoint: give no CONFIG")
        if args.overwrite:
            raise CommandError("--overwrite replaces a run; --resume continues one: give one of them")
        run_dir, config, resume = Path(args.resume), None, True
    else:
        if not args.out:
            raise CommandError("give --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        run_dir = Path(args.out)
        config = load_config(args.config, args.set)  # checked before anything is written
        resume = False
    try:
        summary = train(config, run_dir, resume=resume, fallback=args.fallback, overrides=args.set if resume else None,
                        overwrite=args.overwrite)
    except TrainingError as error:
        raise CommandError(str(error)) from error
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("train", help="train a backbone + margin head (single process, or under torchrun)")
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="training recipe (see configs/)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder: config.yaml, metrics.jsonl, checkpoints/, best.pt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. optim.lr=0.05 (with --resume: applied to the saved config)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    parser.add_argument("--fallback", action="store_true",
                        help="with --resume: go back past a corrupt newest checkpoint, or one with non-finite weights (set aside, not deleted)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --out: replace the run already in RUN_DIR (its checkpoints, config, metrics, summary, best.pt)")
    parser.set_defaults(handler=_run)
