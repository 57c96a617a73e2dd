"""The CPU reference experiment: train on LFW View 1 training people, verify on pairsDevTest.txt.

Steps: align every LFW image with YuNet to the 112x112 template (cached: re-runs skip it), list the
``peopleDevTrain.txt`` people with at least 2 images (1,184 people, 6,671 images) with labels
0..C-1, train with a time budget, verify on the 1,000 ``pairsDevTest.txt`` pairs of unseen people
with 10 stratified folds (the file lists its 500 same pairs first).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..configs import recipe_path
from ..data.align_job import AlignOptions, align_folder
from ..data.protocols import read_people
from ..home import find_detector, find_lfw

__all__ = ["find_lfw", "find_detector", "prepare_lfw", "run_lfw_recipe"]

log = logging.getLogger(__name__)


def prepare_lfw(lfw: Path, detector: Path, cache: Path, workers: int = 2) -> tuple[Path, Path]:
    """Align LFW into ``cache/lfw_aligned`` (resumable) and write the training list.

    Returns:
        (the training list file, the aligned image root).
    """
    aligned = cache / "lfw_aligned"
    report = align_folder(lfw / "images", aligned, AlignOptions(detector=str(detector), workers=workers))
    log.info("LFW aligned: %d of %d images with a face (%s)", report["faces_found"], report["images"], aligned)
    people = [(name, count) for name, count in read_people(lfw / "peopleDevTrain.txt") if count >= 2]
    lines = []
    for label, (name, count) in enumerate(sorted(people)):
        for number in range(1, count + 1):
            relative = f"{name}/{name}_{number:04d}.jpg"
            if (aligned / relative).exists():
                lines.append(f"{(aligned / relative).resolve()} {label}")
    listing = cache / "lfw_devtrain.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("training list: %d images of %d people -> %s", len(lines), len(people), listing)
    return listing, aligned


def run_lfw_recipe(
    out: Path, lfw: str | None = None, detector: str | None = None, cache: str | None = None,
    full: bool = False, overrides: list[str] | None = None,
) -> dict:
    """Prepare (cached), train and verify; returns the training summary (final accuracy included)."""
    from ..train.config import load_config
    from ..train.loop import train

    lfw_dir = find_lfw(lfw)
    detector_path = Path(find_detector(detector, lfw_dir, required=True))
    cache_dir = Path(cache) if cache else out.parent / "cache"
    listing, aligned = prepare_lfw(lfw_dir, detector_path, cache_dir)
    recipe = recipe_path("lfw_cpu" if full else "lfw_cpu_short")
    settings = [f"data.source={listing}", f"eval.pairs={lfw_dir / 'pairsDevTest.txt'}", f"eval.images={aligned}", *(overrides or [])]
    config = load_config(recipe, settings)
    return train(config, out)
