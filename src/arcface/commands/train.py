"""``arcface train CONFIG.yaml --out RUN_DIR [--set key=value ...]`` and ``arcface train --resume RUN_DIR``."""

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
        run_dir, config, resume = Path(args.resume), None, True
    else:
        if not args.out:
            raise CommandError("give --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        run_dir = Path(args.out)
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise CommandError(f"{run_dir} already holds checkpoints: use --resume {run_dir}, or another --out")
        config = load_config(args.config, args.set)
        resume = False
    try:
        summary = train(config, run_dir, resume=resume, fallback=args.fallback, overrides=args.set if resume else None)
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
    parser.add_argument("--fallback", action="store_true", help="with --resume: skip a corrupt newest checkpoint")
    parser.set_defaults(handler=_run)
