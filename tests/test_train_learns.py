"""The trainer learns: a separable synthetic task, against the same run whose learning rate is ~0.

Four identities, each a fixed low-frequency colour pattern under strong per-image noise, written as
PNG files and trained through ``arcface train`` (image folder, bf16 autocast, SGD, warmup and decay:
the default path) with the tiny backbone of ``train_helpers``. Training must bring the loss far below
the frozen run's and under a threshold, move every part of the model, and classify faces it never
saw (new noise) by their nearest class center far better than chance.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from arcface.cli import main
from arcface.data.datasets import FaceTransform, build_dataset
from conftest import REPO_ROOT, run_losses
from train_helpers import TINY_BACKBONE, TinyNoBN, final_parameters, initial_parameters, register

register()

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
CLASSES = 4
EMBEDDING = 16


def _write_identities(root: Path, per_class: int, seed: int) -> Path:
    """``root/id<c>/<i>.png``: class c's pattern (the same for every seed) plus noise drawn from ``seed``."""
    patterns = np.random.default_rng(1234)
    noise = np.random.default_rng(seed)
    for label in range(CLASSES):
        coarse = patterns.uniform(0, 255, (4, 4, 3)).astype(np.float32)
        pattern = cv2.resize(coarse, (112, 112), interpolation=cv2.INTER_LINEAR)
        (root / f"id{label}").mkdir(parents=True)
        for index in range(per_class):
            image = 0.5 * pattern + 64 + noise.normal(0, 60, pattern.shape)  # noise std 60 of 255
            cv2.imwrite(str(root / f"id{label}" / f"{index}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return root


def _held_out_accuracy(weights: dict[str, torch.Tensor], folder: Path) -> float:
    """Fraction of the folder's images whose nearest class center (cosine) is their own class."""
    backbone = TinyNoBN(EMBEDDING)
    backbone.load_state_dict({key.removeprefix("backbone."): value for key, value in weights.items() if key.startswith("backbone.")})
    dataset = build_dataset(folder, transform=FaceTransform(flip=0.0))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        cosines = F.normalize(backbone.eval()(images), dim=1) @ F.normalize(weights["head.weight"].float(), dim=1).T
    return float((cosines.argmax(dim=1) == labels).float().mean())


def test_training_learns_a_separable_task(tmp_path):
    train_folder = _write_identities(tmp_path / "train", per_class=24, seed=1)
    held_out = _write_identities(tmp_path / "held_out", per_class=12, seed=2)
    settings = [f"data.source={train_folder}", f"model.backbone={TINY_BACKBONE}", f"model.embedding_size={EMBEDDING}",
                "data.batch_size=16", "data.flip=false", "schedule.max_steps=30", "checkpoint.every_steps=0", "log_every=1"]
    sets = sum((["--set", value] for value in settings), [])
    # optim.lr must be > 0; 1e-12 is the "lr = 0" run (its weights move by < 1e-4 of the trained run's moves).
    for name, lr in (("trained", 0.05), ("frozen", 1e-12)):
        assert main(["train", SMOKE, "--out", str(tmp_path / name), *sets, "--set", f"optim.lr={lr}"]) == 0
    trained, frozen = run_losses(tmp_path / "trained"), run_losses(tmp_path / "frozen")
    assert len(trained) == len(frozen) == 30
    assert trained[0] == frozen[0]  # the same start: same weights, same first batch
    # Mean of the last 5 steps: the frozen run stays at its start (about 50 for s = 64, m = 0.5).
    trained_end, frozen_end = sum(trained[-5:]) / 5, sum(frozen[-5:]) / 5
    assert trained_end < 0.05 * frozen_end, (trained_end, frozen_end)
    assert trained_end < 1.0, trained  # the threshold: the training faces are nearly all learned

    start = initial_parameters(SMOKE, settings, tmp_path / "unused")
    after, unmoved = final_parameters(tmp_path / "trained"), final_parameters(tmp_path / "frozen")
    for key, value in start.items():
        moved = float((after[key] - value).norm())
        assert moved > 0.01 * float(value.norm()), f"training did not move {key}"
        assert float((unmoved[key] - value).norm()) < 1e-4 * moved, f"the frozen run moved {key}"

    # Held-out faces of the same identities: nearest center, against 1/4 by chance.
    assert _held_out_accuracy(after, held_out) >= 0.9
    assert _held_out_accuracy(unmoved, held_out) <= 0.5
