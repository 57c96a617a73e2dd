"""One ablation figure from a ``benchmarks/inversion.py`` output folder: judge figures and grids per variant.

Run from the repository root, after ``benchmarks/inversion.py --out DIR --variants A B ...``::

    .venv/bin/python benchmarks/inversion_ablation_figure.py runs/inversion_cpu_v6_ablation \
        --set closeset --variants lambda0.05 lambda0 no_jitter_flip no_flip no_jitter \
        --out docs/inversion_ablation_closeset_cpu.png

Left: each variant's rank-1 by the judge (bars, the share of generated images whose nearest template
is their own; chance 1/identities) and its mean cosine to the own template. Right: the variant's
first generated images (its ``inversion_<set>_<variant>.png`` column, laid out as a row), so the
figure shows what each setting does to the faces next to what the judge read. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np


def judged(folder: Path, image_set: str, variant: str) -> tuple[float, float, int]:
    """(rank-1 %, mean cosine to the own template, images) from ``judged_<set>_<variant>.tsv``."""
    path = folder / f"judged_{image_set}_{variant}.tsv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run benchmarks/inversion.py with --variants {variant} --sets {image_set} --out {folder}")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise SystemExit(f"{path} has no judged images")
    hits = np.array([int(row["rank1_hit"]) for row in rows])
    cosines = np.array([float(row["cos_own"]) for row in rows])
    return 100.0 * hits.mean(), float(cosines.mean()), len(rows)


def grid_row(folder: Path, image_set: str, variant: str, tile: int = 112) -> np.ndarray:
    """The variant's grid (a column of ``tile``-high images with 2-pixel gaps) as one RGB row."""
    path = folder / f"inversion_{image_set}_{variant}.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"{path} is missing or not an image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    rows = [image[top : top + tile] for top in range(0, image.shape[0] - tile + 1, tile + 2)]
    return np.concatenate([np.pad(row, ((0, 0), (0, 2), (0, 0)), constant_values=255) for row in rows], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the --out folder of benchmarks/inversion.py")
    parser.add_argument("--set", dest="image_set", default="closeset", choices=["closeset", "openset"])
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("matplotlib is needed for the figure: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [judged(args.folder, args.image_set, v) for v in args.variants]
    rows = [grid_row(args.folder, args.image_set, v) for v in args.variants]
    count = len(args.variants)
    figure, axes = plt.subplots(count, 2, figsize=(11, 1.25 * count + 0.6), gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    best = max(rank1 for rank1, _, _ in figures)
    for k, (variant, (rank1, cos_own, images), row) in enumerate(zip(args.variants, figures, rows)):
        bar, pictures = axes[k]
        bar.barh([0], [rank1], color="tab:blue" if rank1 < best else "tab:green")
        bar.set_xlim(0, max(50.0, best * 1.2))
        bar.set_yticks([0], [variant])
        bar.text(rank1 + 0.5, 0, f"{rank1:.0f}%  cos {cos_own:.3f}", va="center", fontsize=9)
        bar.set_xlabel("rank-1 by the judge (%)" if k == count - 1 else "")
        pictures.imshow(row)
        pictures.axis("off")
    figure.suptitle(args.title or f"{args.image_set}: rank-1 of {figures[0][2]} generated images by the independent judge")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    plt.close(figure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
