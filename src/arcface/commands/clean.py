"""``arcface clean CHECKPOINT DATA``: sub-center ArcFace cleaning of a training set."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .common import add_device_argument, device, progress

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    from ..clean.job import clean_dataset

    report = clean_dataset(args.checkpoint, args.data, args.out, threshold_deg=args.threshold_deg, truth=args.truth,
                           batch_size=args.batch_size, device=device(args.device), workers=args.workers,
                           flip_test=not args.no_flip, progress=progress(args) is not False and sys.stderr.isatty(), rec=args.rec)
    sys.stdout.write(json.dumps(report) + "\n")
    truth = report.get("ground_truth")
    if truth:
        log.info("noise rate %.1f%% -> %.1f%%; dropped samples: precision %.1f%%, recall %.1f%%",
                 100 * truth["noise_rate_before"], 100 * truth["noise_rate_after"], 100 * truth["precision"], 100 * truth["recall"])
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "clean", help="drop noisy samples with a sub-center ArcFace checkpoint (dominant sub-center + angle threshold)",
        description="Embed DATA with the checkpoint's backbone, find each class's dominant sub-center, drop samples "
        "farther than --threshold-deg from it, renumber the classes left, and write OUT/train.txt (OUT/train.rec for a "
        ".rec DATA), report.json, angles.png, dominant_centers.pt (for head.init_from) and per-sample/per-class TSVs.",
    )
    parser.add_argument("checkpoint", help="checkpoint .pt (or run folder) trained with sub-centers (K > 1) on DATA")
    parser.add_argument("data", help="the training set: image folder, 'path label' list file or insightface .rec")
    parser.add_argument("--threshold-deg", type=float, default=75.0, help="drop samples farther than this (degrees) from the dominant sub-center")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--truth", help="truth.tsv from `arcface data corrupt` (default: beside DATA when it is a list file)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="image reading processes")
    add_device_argument(parser)
    parser.add_argument("--rec", action="store_true",
                        help="also write the cleaned set as OUT/train.rec/.idx/property (insightface layout; always for a .rec DATA)")
    parser.add_argument("--no-flip", action="store_true", help="embed without flip-test")
    parser.set_defaults(handler=_run)
