"""Accuracy on LFW pairsDevTest against training time, for the CPU reference recipe.

Run from the repository root::

    .venv/bin/python benchmarks/lfw_curve.py                       # runs `arcface lfw` (12 min), then plots
    .venv/bin/python benchmarks/lfw_curve.py --full                # the 60-minute recipe
    .venv/bin/python benchmarks/lfw_curve.py --run runs/lfw        # only plot an existing run

The recipe evaluates every ``eval.every_steps`` steps (10-fold accuracy on the 1,000 pairs of
``pairsDevTest.txt``, people never seen in training); this script reads those points from the run's
``metrics.jsonl`` and prints one line per point, ``accuracy_at_<minutes>min=<percent>``, then the
final accuracy, and writes a PNG curve (with ``--png``; needs matplotlib).

Target of the recipe: at least 90% with at most 60 minutes of training on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def read_points(run: Path) -> list[tuple[float, float]]:
    """(training minutes, accuracy %) of every evaluation in the run."""
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "eval" in entry and "pairsDevTest.txt" in entry["eval"]:
            points.append((entry["elapsed_s"] / 60.0, 100.0 * entry["eval"]["pairsDevTest.txt"]))
    return points


def plot(points: list[tuple[float, float]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    axes.axhline(90.0, linestyle="--", color="gray", label="target 90%")
    axes.set_xlabel("training time (minutes, 2 CPU cores)")
    axes.set_ylabel("pairsDevTest 10-fold accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="an existing run folder to read instead of training")
    parser.add_argument("--full", action="store_true", help="train the 60-minute recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/lfw_curve"), help="run folder when training")
    parser.add_argument("--png", type=Path, help="write the curve here (e.g. docs/lfw_curve.png)")
    args = parser.parse_args(argv)
    run = args.run
    if run is None:
        command = [sys.executable, "-m", "arcface.cli", "lfw", "--out", str(args.out)] + (["--full"] if args.full else [])
        subprocess.run(command, check=True)
        run = args.out
    points = read_points(run)
    if not points:
        parser.error(f"{run}: no pairsDevTest evaluations in metrics.jsonl")
    for minutes, accuracy in points:
        print(f"accuracy_at_{minutes:.1f}min={accuracy:.2f}")
    print(f"final_accuracy={points[-1][1]:.2f}")
    print(f"training_minutes={points[-1][0]:.1f}")
    if args.png:
        plot(points, args.png, f"LFW CPU recipe ({run.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
