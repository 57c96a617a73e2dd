"""``arcface invert``: load a checkpoint, pick targets (classes, photos, embeddings), invert, write PNGs.

Outputs in the output folder: ``grid_<target>.png`` (the random starts of one target side by side),
``images/<target>_<start>.png`` (each final image), ``targets.json`` (what each target is) and
``history.json`` (both loss terms per step, per batch).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..data.errors import DataError
from ..model import load_trained_model
from .bn_prior import batchnorm_layers
from .config import InversionConfig
from .inversion import invert_classes, invert_embeddings

__all__ = ["load_for_inversion", "run_inversion", "to_uint8", "save_grid"]

logger = logging.getLogger(__name__)


def load_for_inversion(checkpoint: str | os.PathLike, need_head: bool) -> tuple[nn.Module, nn.Module | None, dict]:
    """(backbone, head or None, checkpoint state) from a training checkpoint or run folder."""
    trained = load_trained_model(checkpoint, need_head=need_head)
    if not batchnorm_layers(trained.backbone):
        raise DataError(f"{trained.path}: the backbone has no BatchNorm2d statistics; inversion's prior needs them")
    return trained.backbone, trained.head, trained.state


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8 RGB."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.movedim(-3, -1).numpy()


def save_grid(images: torch.Tensor, path: Path, pad: int = 2) -> None:
    """(rows, cols, 3, H, W) in [-1, 1] -> one PNG, rows x cols with ``pad`` white pixels between."""
    pixels = to_uint8(images)
    rows, cols, height, width = pixels.shape[:4]
    grid = np.full((rows * (height + pad) - pad, cols * (width + pad) - pad, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            grid[r * (height + pad) : r * (height + pad) + height, c * (width + pad) : c * (width + pad) + width] = pixels[r, c]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[..., ::-1]):
        raise DataError(f"{path}: cannot write the image")


def _embed_photos(backbone: nn.Module, photos: list[str], align: str, detector: str | None, device: str) -> torch.Tensor:
    from ..eval.embed import embed_images
    from ..eval.images import FaceImages

    images = FaceImages([str(Path(p).resolve()) for p in photos], "/", align=align, detector=detector)
    return torch.from_numpy(embed_images(backbone.to(device), images, device=device, num_workers=0))


def run_inversion(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    config: InversionConfig,
    classes: list[int] | None = None,
    photos: list[str] | None = None,
    embeddings: np.ndarray | None = None,
    starts: int = 4,
    batch: int = 16,
    align: str = "auto",
    detector: str | None = None,
    progress: bool = True,
) -> dict:
    """Invert the targets in batches of ``batch`` images; write grids and images into ``out``."""
    given = [name for name, value in (("classes", classes), ("photos", photos), ("embeddings", embeddings)) if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one kind of target: class indices, photos, or embeddings")
    if starts < 1 or batch < 1:
        raise ValueError(f"starts and batch must be >= 1, got {starts} and {batch}")
    backbone, head, _ = load_for_inversion(checkpoint, need_head=classes is not None)
    backbone = backbone.to(config.device)
    if classes is not None:
        names = [f"class{c}" for c in classes]
        targets: list = list(classes)
    else:
        if photos is not None:
            vectors = _embed_photos(backbone, photos, align, detector, config.device)
            names = [Path(p).stem for p in photos]
        else:
            vectors = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
            if vectors.ndim != 2:
                raise ValueError(f"embeddings must be (T, D), got shape {tuple(vectors.shape)}")
            names = [f"embedding{i}" for i in range(len(vectors))]
        targets = list(vectors)
    out = Path(out)
    per_batch = max(1, batch // starts)
    histories, results = [], []
    for begin in range(0, len(targets), per_batch):
        chunk = targets[begin : begin + per_batch]
        chunk_config = InversionConfig(**{**config.to_dict(), "seed": config.seed + begin})
        if classes is not None:
            images, history = invert_classes(backbone, head, chunk, chunk_config, starts, progress)
        else:
            images, history = invert_embeddings(backbone, torch.stack(chunk), chunk_config, starts, progress)
        histories.append(history)
        for offset, target_images in enumerate(images):
            name = names[begin + offset]
            save_grid(target_images[None], out / f"grid_{name}.png")
            for start, image in enumerate(to_uint8(target_images)):
                path = out / "images" / f"{name}_{start}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), image[..., ::-1])
            results.append(target_images)
    report = {"checkpoint": str(checkpoint), "config": config.to_dict(), "starts": starts, "batch": batch,
              "targets": names, "final_task_loss": [h["task"][-1] for h in histories], "final_bn_loss": [h["bn"][-1] for h in histories]}
    (out / "targets.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "history.json").write_text(json.dumps(histories) + "\n", encoding="utf-8")
    save_grid(torch.stack(results), out / "grid_all.png")
    logger.info("%d targets x %d starts inverted into %s", len(names), starts, out)
    return report
