"""``arcface invert CHECKPOINT``: faces of class centers or embeddings, from the trained model alone."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import CommandError
from .common import add_detector_argument, add_device_argument, detector_for, device, progress

__all__ = ["register"]

log = logging.getLogger(__name__)


def _classes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--classes expects comma-separated class indices, got {text!r}") from None
    if not values:
        raise CommandError("--classes is empty")
    return values


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..invert.config import InversionConfig
    from ..invert.job import run_inversion

    embeddings = None
    if args.embeddings:
        path = Path(args.embeddings)
        if not path.is_file():
            raise CommandError(f"{path}: embeddings file not found")
        try:
            embeddings = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise CommandError(f"{path}: not a .npy array ({error})") from None
    config = InversionConfig(
        steps=args.steps, lambda_bn=args.lambda_bn, lr=args.lr, jitter=args.jitter, flip=not args.no_flip,
        scale_jitter=args.scale_jitter, rotate_deg=args.rotate_deg, color_shift=args.color_shift,
        reverse_attack=args.reverse_attack, parameterization=args.parameterization,
        fourier_decay=args.fourier_decay, coarse_to_fine=args.coarse_to_fine,
        layer_erosion=args.layer_erosion, embedding_weight=args.embedding_weight, seed=args.seed, precision=args.precision,
        device=device(args.device),
    )
    try:
        config.validate()
    except ValueError as error:
        raise CommandError(str(error)) from None
    photos = args.embedding_of
    report = run_inversion(
        args.checkpoint, args.out, config, classes=_classes(args.classes) if args.classes else None, photos=photos,
        embeddings=embeddings, starts=args.starts, batch=args.batch, align=args.align,
        detector=detector_for(args, Path(photos[0]) if photos else None), progress=progress(args) is not False and sys.stderr.isatty(),
    )
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "invert", help="generate faces of class centers (close-set) or of embeddings (open-set) from a checkpoint",
        description="Optimize images from noise so that the model sees the target: margin loss toward a class "
        "center (--classes) or L2 to an embedding (--embedding-of PHOTO, --embeddings FILE.npy), plus lambda_bn "
        "times the distance of the images' BatchNorm statistics to those stored in the model. Writes a PNG grid "
        "per target (one column per random start), the single images, targets.json and history.json.",
    )
    parser.add_argument("checkpoint", help="training checkpoint .pt or run folder (a backbone with BatchNorm)")
    targets = parser.add_mutually_exclusive_group(required=True)
    targets.add_argument("--classes", help="close-set: comma-separated class indices, e.g. 0,5,17")
    targets.add_argument("--embedding-of", nargs="+", metavar="PHOTO", help="open-set: photos whose embeddings to invert")
    targets.add_argument("--embeddings", help="open-set: a .npy file of (T, D) embeddings")
    # The defaults are InversionConfig's (tests/test_invert.py checks they agree); importing it here
    # would import torch for every command's --help.
    parser.add_argument("--steps", type=int, default=2000, help="optimization steps per batch of images")
    parser.add_argument("--lambda-bn", type=float, default=0.05, help="weight of the BatchNorm-statistics prior (paper: 0.05)")
    parser.add_argument("--batch", type=int, default=16, help="images optimized together (BN statistics are over the batch)")
    parser.add_argument("--starts", type=int, default=4, help="random starts per target (columns of each grid)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the image parameters (cosine decay)")
    parser.add_argument("--parameterization", default="fourier", choices=["fourier", "pixels"],
                        help="what is optimized: the pixels, or a 1/frequency-scaled spectrum per image (smoother faces)")
    parser.add_argument("--fourier-decay", type=float, default=1.5,
                        help="fourier: spectrum coefficients scaled by 1/frequency**x (larger: smoother images)")
    parser.add_argument("--coarse-to-fine", type=float, default=0.0,
                        help="fourier: over this share of the steps, let through frequencies from 4 cycles per image "
                        "up to all of them, so the coarse layout settles before detail (0: off)")
    parser.add_argument("--jitter", type=int, default=4, help="random shift of each image per step, in pixels (0: off)")
    parser.add_argument("--scale-jitter", type=float, default=0.0, help="random zoom per step by a factor in [1-x, 1+x] (0: off)")
    parser.add_argument("--rotate-deg", type=float, default=0.0, help="random rotation per step, up to this many degrees (0: off)")
    parser.add_argument("--color-shift", type=float, default=0.0,
                        help="random gain 1 +- x and offset +- x per colour channel of each image per step (0: off)")
    parser.add_argument("--reverse-attack", type=float, default=0.0,
                        help="each view first moved one L2 step of random length in [0, x] up the loss, so the image "
                        "must satisfy the model in a neighbourhood (0: off; about 1.3x the cost of a step)")
    parser.add_argument("--layer-erosion", type=float, default=0.0,
                        help="each step, scale every BatchNorm2d output of each image by a random gain in [1-x, 1+x]: "
                        "a slightly different network every step (0: off)")
    parser.add_argument("--no-flip", action="store_true", help="no random mirroring per step")
    parser.add_argument("--embedding-weight", type=float, default=8.0,
                        help="open-set: weight of the L2 loss between the normalized embeddings")
    parser.add_argument("--seed", type=int, default=0, help="random starts and per-step views")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast of the forward pass")
    add_device_argument(parser)
    parser.add_argument("--align", default="auto", choices=["auto", "yunet", "none", "center"], help="how --embedding-of photos are prepared")
    add_detector_argument(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(handler=_run)
