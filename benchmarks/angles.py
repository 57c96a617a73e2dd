"""Angle distributions of an ArcFace training run, as the paper shows them.

1. Target angles: the angle between each training face's feature and its own class center, at the
   start, the middle and the end of training (the paper's histograms of theta_y: they start near 90
   degrees and move toward 0 as the margin loss pulls them in).
2. Pair angles: the angle between the two faces of each same-person and different-person pair of
   ``pairsDevTest.txt`` (people never seen in training), with the trained model, flip test.

The run is the LFW recipe (``configs/lfw_cpu.yaml``) with the paper's ArcFace head (s = 64, m = 0.5)
for ``--steps`` steps. "Start" is the checkpoint after the first step (the run is stopped there and
resumed, which continues it exactly), middle and end are checkpoints at half and all of the steps.
Printed: ``target_angle_mean_deg_<stage>`` per stage, ``pair_angle_mean_deg_same``/``_different``,
and ``pair_angle_overlap_pct`` (pairs on the wrong side of the best single angle threshold);
figure ``<out>/angles.png`` (docs/angle_distributions.png), angles in ``<out>/angles.npz``.

    .venv/bin/python benchmarks/angles.py --train-list runs/cache/lfw_devtrain.txt --images runs/cache/lfw_aligned \\
        --pairs ../shared/data/lfw_deepfunneled/pairsDevTest.txt --out runs/angles --steps 230
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("benchmarks.angles")

REPO = Path(__file__).resolve().parents[1]
HEAD = ["head.name=arcface", "head.scale=64", "head.m2=0.5"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "arcface.cli", *args]


def train_with_stages(args) -> list[Path]:
    """Train, keeping checkpoints after step 1, at half the steps and at the end; returns them in order."""
    run = args.out / "run"
    half = max(2, args.steps // 2)
    settings = [
        f"data.source={args.train_list}", f"data.root={args.images}", f"data.num_workers={args.workers}", "eval.pairs=null",
        "eval.images=null", "eval.every_steps=0", "schedule.time_budget_minutes=0", f"schedule.max_steps={args.steps}",
        "checkpoint.every_minutes=0", "checkpoint.keep_last=10", f"device={args.device}", *HEAD, "schedule.stop_after_steps=1",
    ]
    subprocess.run(cli("train", str(REPO / "configs" / "lfw_cpu.yaml"), "--out", str(run), *sum((["--set", s] for s in settings), [])), check=True)
    resume = ["schedule.stop_after_steps=0", f"checkpoint.every_steps={half}"]
    subprocess.run(cli("train", "--resume", str(run), *sum((["--set", s] for s in resume), [])), check=True)
    return [run / "checkpoints" / f"step_{step:08d}.pt" for step in (1, half, args.steps)]


def read_list(train_list: Path, images: Path) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    for line in train_list.read_text().splitlines():
        if line.strip():
            path, label = line.rsplit(" ", 1)
            paths.append(str(images.resolve() / path) if not Path(path).is_absolute() else path)
            labels.append(int(label))
    return paths, np.array(labels)


def target_angles(checkpoint: Path, paths: list[str], labels: np.ndarray, device: str) -> np.ndarray:
    from arcface.eval import embed_images
    from arcface.eval.images import FaceImages
    from arcface.model import load_trained_model

    trained = load_trained_model(checkpoint, need_head=True)
    backbone, head = trained.backbone, trained.head
    embedded = embed_images(backbone.to(device), FaceImages(paths, "/", align="none"), flip_test=False, device=device, batch_size=128)
    centers = torch.nn.functional.normalize(head.weight.detach().float(), dim=1).numpy()
    cos = np.einsum("nd,nd->n", embedded, centers[labels])
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def pair_angles(checkpoint: Path, pairs: Path, images: Path, device: str) -> tuple[np.ndarray, np.ndarray]:
    from arcface.data.protocols import read_pairs
    from arcface.eval import embed_images
    from arcface.eval.images import FaceImages
    from arcface.model import load_trained_model

    backbone = load_trained_model(checkpoint).backbone
    table = read_pairs(pairs, images)
    unique = sorted({name for pair in table for name in (pair.left, pair.right)})
    index = {name: i for i, name in enumerate(unique)}
    faces = FaceImages([str(images.resolve() / name) for name in unique], "/", align="none")
    embedded = embed_images(backbone.to(device), faces, device=device, batch_size=128)
    first = embedded[[index[pair.left] for pair in table]]
    second = embedded[[index[pair.right] for pair in table]]
    angles = np.degrees(np.arccos(np.clip(np.einsum("nd,nd->n", first, second), -1, 1)))
    return angles, np.array([pair.same for pair in table], dtype=bool)


def overlap_pct(angles: np.ndarray, same: np.ndarray) -> float:
    """Smallest share of pairs misclassified by one angle threshold (same when angle <= t)."""
    best = min(np.sum(same & (angles > t)) + np.sum(~same & (angles <= t)) for t in np.concatenate([[-1.0], np.sort(angles)]))
    return float(100 * best / len(angles))


def plot(stages: dict[str, np.ndarray], pairs: np.ndarray, same: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(0, 120, 61)
    for name, angles in stages.items():
        left.hist(angles, bins=bins, alpha=0.5, label=f"{name} (mean {angles.mean():.1f}°)")
    left.set_xlabel("angle between feature and its class center (degrees)")
    left.set_ylabel("training faces")
    left.set_title("Target angles during training")
    left.legend()
    right.hist(pairs[same], bins=bins, alpha=0.6, label=f"same person (mean {pairs[same].mean():.1f}°)")
    right.hist(pairs[~same], bins=bins, alpha=0.6, label=f"different people (mean {pairs[~same].mean():.1f}°)")
    right.set_xlabel("angle between the two faces of a pair (degrees)")
    right.set_ylabel("pairs")
    right.set_title("pairsDevTest (unseen people), end of training")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-list", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=230)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/angles"))
    parser.add_argument("--png", type=Path, help="figure path (default <out>/angles.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    for path in (args.train_list, args.images, args.pairs):
        if not path.exists():
            parser.error(f"{path} not found (run `arcface lfw` first to align LFW)")
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoints = train_with_stages(args)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    paths, labels = read_list(args.train_list, args.images)
    stages = {}
    for name, checkpoint in zip(("start (step 1)", f"middle (step {checkpoints[1].stem[5:].lstrip('0')})", f"end (step {args.steps})"), checkpoints):
        stages[name] = target_angles(checkpoint, paths, labels, device)
        print(f"target_angle_mean_deg_{name.split()[0]}={stages[name].mean():.2f}", flush=True)
    pairs, same = pair_angles(checkpoints[-1], args.pairs, args.images, device)
    print(f"pair_angle_mean_deg_same={pairs[same].mean():.2f}", flush=True)
    print(f"pair_angle_mean_deg_different={pairs[~same].mean():.2f}", flush=True)
    print(f"pair_angle_overlap_pct={overlap_pct(pairs, same):.2f}", flush=True)
    np.savez(args.out / "angles.npz", pairs=pairs, same=same, **{name.split()[0]: a for name, a in stages.items()})
    png = args.png or args.out / "angles.png"
    plot(stages, pairs, same, png)
    print(f"angles_png={png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
