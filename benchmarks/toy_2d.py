"""The paper's toy experiment on real faces: 2-D embeddings of 8 identities, Softmax vs ArcFace.

The ArcFace paper trains 2-D feature embedding networks on 8 identities with many images each and
plots the normalized features on the circle: Softmax leaves the classes touching, ArcFace opens a
clear angular gap between them. Here the 8 identities are the LFW people with the most images
(George W Bush 530, Colin Powell 236, Tony Blair 144, Donald Rumsfeld 121, Gerhard Schroeder 109,
Ariel Sharon 77, Hugo Chavez 71, Junichiro Koizumi 60: 1,348 aligned faces). Both runs use the LFW
recipe (``configs/lfw_cpu.yaml``) with ``model.embedding_size=2`` and only the head changed: Softmax
(unnormalized) and ArcFace (s = 64, m = 0.5).

Printed, per head: ``<head>_mean_target_angle_deg`` (mean angle between a face's feature and its own
class center), ``<head>_min_center_gap_deg`` (smallest angle between two class centers) and
``<head>_nearest_center_pct`` (faces whose nearest center is their own); and the figure
``<out>/toy_2d.png`` (docs/toy_2d.png).

    .venv/bin/python benchmarks/toy_2d.py --images runs/cache/lfw_aligned --out runs/toy_2d --steps 600

600 steps of batch 64 (about 28 epochs) take about 20 minutes per head on the 2-core CPU, a minute
on one GPU (``--parallel 2`` runs both heads at once).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from parallel import run_all

log = logging.getLogger("benchmarks.toy_2d")

REPO = Path(__file__).resolve().parents[1]
HEADS = {
    "softmax": ["head.name=softmax", "head.scale=null"],
    "arcface": ["head.name=arcface", "head.scale=64", "head.m2=0.5"],
}


def largest_identities(images: Path, count: int) -> list[str]:
    """The ``count`` subfolders with the most .jpg images (ties by name)."""
    sizes = {folder.name: sum(1 for _ in folder.glob("*.jpg")) for folder in images.iterdir() if folder.is_dir()}
    return sorted(sizes, key=lambda name: (-sizes[name], name))[:count]


def write_list(images: Path, people: list[str], out: Path) -> list[tuple[str, int]]:
    entries = [(f"{name}/{path.name}", label) for label, name in enumerate(people) for path in sorted((images / name).glob("*.jpg"))]
    out.write_text("".join(f"{path} {label}\n" for path, label in entries))
    return entries


def features(run: Path, images: Path, entries: list[tuple[str, int]], device: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) raw features of the training faces (no flip) and (C, 2) class centers."""
    from arcface.eval import embed_images
    from arcface.eval.images import FaceImages
    from arcface.model import load_trained_model

    trained = load_trained_model(run, need_head=True)
    backbone, head = trained.backbone, trained.head
    backbone = backbone.to(device)
    faces = FaceImages([str(images.resolve() / path) for path, _ in entries], "/", align="none")
    embedded = embed_images(backbone, faces, flip_test=False, normalize=False, device=device)
    return embedded, head.weight.detach().float().cpu().numpy()


def angle_figures(points: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> dict[str, float]:
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    unit_centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    cos = np.clip(unit @ unit_centers.T, -1, 1)
    target = np.degrees(np.arccos(cos[np.arange(len(labels)), labels]))
    between = np.degrees(np.arccos(np.clip(unit_centers @ unit_centers.T, -1, 1)))
    between[np.diag_indices_from(between)] = 360.0
    return {
        "mean_target_angle_deg": float(target.mean()),
        "min_center_gap_deg": float(between.min()),
        "nearest_center_pct": float(100 * (cos.argmax(1) == labels).mean()),
    }


def plot(results: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], people: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 5.5))
    colors = plt.get_cmap("tab10").colors
    for axis, (name, (points, labels, centers)) in zip(np.atleast_1d(axes), results.items()):
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        radius = 1 + 0.04 * (labels % 2)  # alternate rings so neighbouring classes stay visible
        for label, person in enumerate(people):
            chosen = labels == label
            axis.scatter(unit[chosen, 0] * radius[chosen], unit[chosen, 1] * radius[chosen], s=6, alpha=0.5, color=colors[label], label=person.replace("_", " "))
            direction = centers[label] / np.linalg.norm(centers[label])
            axis.plot([0, direction[0] * 1.15], [0, direction[1] * 1.15], color=colors[label], lw=1.5)
        axis.set_title(name)
        axis.set_aspect("equal")
        axis.set_xlim(-1.3, 1.3)
        axis.set_ylim(-1.3, 1.3)
        axis.axis("off")
    np.atleast_1d(axes)[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=3)
    figure.suptitle("2-D features of 8 LFW identities (normalized), lines: class centers")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="aligned LFW, one folder per person (runs/cache/lfw_aligned)")
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/toy_2d"))
    parser.add_argument("--png", type=Path, help="figure path (default <out>/toy_2d.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    if not args.images.is_dir():
        parser.error(f"{args.images}: not a folder (run `arcface lfw` first to align LFW)")
    args.out.mkdir(parents=True, exist_ok=True)
    people = largest_identities(args.images, args.identities)
    entries = write_list(args.images, people, args.out / "train.txt")
    log.info("%d identities, %d images: %s", len(people), len(entries), ", ".join(people))
    jobs = {}
    for name, head in HEADS.items():
        settings = [
            f"data.source={args.out.resolve() / 'train.txt'}", f"data.root={args.images.resolve()}", f"data.num_workers={args.workers}",
            "eval.pairs=null", "eval.images=null", "eval.every_steps=0", "model.embedding_size=2", "schedule.time_budget_minutes=0",
            f"schedule.max_steps={args.steps}", "checkpoint.every_minutes=0", "checkpoint.keep_last=1", f"device={args.device}", *head,
        ]
        jobs[name] = [[sys.executable, "-m", "arcface.cli", "train", str(REPO / "configs" / "lfw_cpu.yaml"), "--out", str(args.out / name),
                       *sum((["--set", s] for s in settings), [])]]
    run_all(jobs, args.parallel, args.out / "logs")
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    labels = np.array([label for _, label in entries])
    results = {}
    for name in HEADS:
        points, centers = features(args.out / name, args.images, entries, device)
        np.savez(args.out / f"{name}_features.npz", points=points, labels=labels, centers=centers, people=np.array(people))
        results[name] = (points, labels, centers)
        for key, value in angle_figures(points, labels, centers).items():
            print(f"{name}_{key}={value:.2f}", flush=True)
    png = args.png or args.out / "toy_2d.png"
    plot(results, people, png)
    print(f"toy_2d_png={png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
