"""The ArcFace paper's target-logit curves and binary decision margins, drawn from our own heads.

Run from the repository root::

    .venv/bin/python benchmarks/margin_figures.py --out docs

Writes two PNGs (matplotlib, Agg backend):

* ``margin_penalty.png``: the target logit before scaling, i.e. the value that replaces
  ``cos(theta)`` at the ground-truth class, against the angle theta (degrees, 0 to 180) between
  the feature and its class center, for Softmax / NormFace (``cos theta``), SphereFace
  (``cos(1.35 theta)``), CosFace (``cos theta - 0.35``), ArcFace (``cos(theta + 0.5)``) and the
  combined margin (``cos(theta + 0.3) - 0.2``): the paper's target-logit figure.
* ``decision_margins.png``: the decision boundaries of the binary case in the (theta1, theta2)
  plane, one panel per method: class 1 wins where its margined target logit beats the plain logit
  of class 2, ``target(theta1) > cos(theta2)``, so its boundary is
  ``theta2 = arccos(target(theta1))`` (defined where the target logit is in [-1, 1]); class 2's is
  the mirror image. Softmax: theta1 = theta2, SphereFace: 1.35 theta1 = theta2, CosFace:
  cos theta1 - 0.35 = cos theta2, ArcFace: theta1 + 0.5 = theta2. The band between the two lines
  is the margin, where neither class is accepted in training.

None of the formulas above is typed here: every value comes from the heads the training uses,
``create_head(name, num_classes=2, embedding_size=2, scale=1.0)`` with the presets' margins (see
``arcface.heads.presets``), evaluated in float64 on a unit 2-D embedding at angle theta to class 0's
center (``MarginHead.logits``, column 0). "Softmax" is the ``normface`` preset (normalized, no
margin): the project's ``softmax`` head is the unnormalized linear layer, which has no target
angle. Cosines are clamped to within 1e-7 of +-1 before arccos, so at theta = 0 and 180 degrees the
curves are off by up to ~2e-4 from the closed forms.

Beyond the pi region: the margined angle ``m1 * theta + m2`` passes pi at
``theta_b = (pi - m2) / m1`` (133.3 degrees for SphereFace, 151.4 for ArcFace, 162.8 for the
combined margin; CosFace and NormFace have none). Past it ``cos(m1 * theta + m2)`` rises again, so
a sample farther from its center would get a larger target logit. The heads' default
``pi_region="fallback"`` (what training uses) continues with ``cos(theta) - (1 + cos(theta_b)) - m3``
there: continuous at theta_b and decreasing to 180 degrees. The first figure draws, dotted past
theta_b, what ``pi_region="none"`` (insightface's current ArcFace) gives instead.

Output: one ``key=value`` line per figure written and a few values to check, e.g.
``arcface_logit_at_60deg`` (``cos(60 deg + 0.5 rad)`` = 0.0236); diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from arcface.heads import create_head
from arcface.heads.margin import boundary_angle

log = logging.getLogger("benchmarks.margin_figures")

# create_head names, in the paper's order; all are presets of the combined margin.
METHODS = ("normface", "sphereface", "cosface", "arcface", "combined")
LABELS = {
    "normface": "Softmax / NormFace",
    "sphereface": "SphereFace (m1=1.35)",
    "cosface": "CosFace (m3=0.35)",
    "arcface": "ArcFace (m2=0.5)",
    "combined": "Combined (m2=0.3, m3=0.2)",
}
COLORS = {"normface": "black", "sphereface": "tab:green", "cosface": "tab:orange", "arcface": "tab:red", "combined": "tab:blue"}
CURVE_RANGE_DEG = (0.0, 180.0)
BOUNDARY_RANGE_DEG = (0.0, 90.0)
NUM_POINTS = 721


def build_head(name: str, pi_region: str | None = None) -> torch.nn.Module:
    """A float64 two-class head on 2-D embeddings, scale 1, class 0's center on the x axis."""
    kwargs = {} if pi_region is None else {"pi_region": pi_region}
    head = create_head(name, num_classes=2, embedding_size=2, scale=1.0, **kwargs).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, dtype=torch.float64))
    return head


def target_logit(name: str, theta_deg: np.ndarray, pi_region: str | None = None) -> np.ndarray:
    """The head's unscaled target logit for a unit embedding at each angle (degrees) to its center.

    ``pi_region=None`` keeps the head's default (what training uses).
    """
    theta = torch.as_tensor(np.radians(np.asarray(theta_deg, dtype=np.float64)))
    embeddings = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    labels = torch.zeros(len(theta), dtype=torch.long)
    head = build_head(name, pi_region)
    with torch.no_grad():
        return head.logits(embeddings, labels)[:, 0].numpy()


def target_logit_curves(theta_deg: np.ndarray, pi_region: str | None = None) -> dict[str, np.ndarray]:
    """``{method: target logit at each theta (degrees)}`` for every method of :data:`METHODS`."""
    return {name: target_logit(name, theta_deg, pi_region) for name in METHODS}


def binary_boundaries(theta1_deg: np.ndarray) -> dict[str, np.ndarray]:
    """``{method: theta2 (degrees)}`` on class 1's decision boundary, ``target(theta1) = cos(theta2)``.

    NaN where the margined target logit leaves [-1, 1] (no theta2 gets there).
    """
    boundaries = {}
    for name, logit in target_logit_curves(theta1_deg).items():
        with np.errstate(invalid="ignore"):
            boundaries[name] = np.degrees(np.arccos(np.where(np.abs(logit) <= 1.0, logit, np.nan)))
    return boundaries


def theta_b_deg(name: str) -> float:
    """Where the preset's margined angle reaches pi, in degrees (inf when it never does)."""
    head = build_head(name)
    if head.m1 == 1.0 and head.m2 == 0.0:
        return math.inf
    return math.degrees(boundary_angle(head.m1, head.m2))


def plot_target_logits(png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theta = np.linspace(*CURVE_RANGE_DEG, NUM_POINTS)
    curves = target_logit_curves(theta)
    unguarded = target_logit_curves(theta, pi_region="none")
    figure, axes = plt.subplots(figsize=(7, 5))
    for name in METHODS:
        axes.plot(theta, curves[name], color=COLORS[name], label=LABELS[name])
        past = theta >= theta_b_deg(name)
        if past.any():
            axes.plot(theta[past], unguarded[name][past], color=COLORS[name], linestyle=":", linewidth=1.2)
    axes.plot([], [], color="gray", linestyle=":", label="pi_region='none' past theta_b")
    axes.set_xlim(*CURVE_RANGE_DEG)
    axes.set_xticks(np.arange(0, 181, 30))
    axes.set_xlabel("angle theta between feature and target center (degrees)")
    axes.set_ylabel("target logit before scale")
    axes.set_title("Target logit curves (heads' default pi_region='fallback')")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)
    plt.close(figure)


def plot_decision_margins(png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theta = np.linspace(*BOUNDARY_RANGE_DEG, NUM_POINTS)
    boundaries = binary_boundaries(theta)
    low, high = BOUNDARY_RANGE_DEG
    figure, axes_row = plt.subplots(1, len(METHODS), figsize=(3.2 * len(METHODS), 4.2), sharey=True)
    for axes, name in zip(axes_row, METHODS):
        theta2 = boundaries[name]
        color = COLORS[name]
        axes.plot(theta, theta2, color=color, label="class 1 boundary")
        axes.plot(theta2, theta, color=color, linestyle="--", label="class 2 boundary")
        # Class 1 is accepted above its line, class 2 right of its own: shade the band in between.
        axes.fill_between(theta, np.fmin(theta2, high), theta, where=theta2 > theta, color=color, alpha=0.15)
        axes.fill_betweenx(theta, np.fmin(theta2, high), theta, where=theta2 > theta, color=color, alpha=0.15)
        axes.plot([low, high], [low, high], color="gray", linewidth=0.6)
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_aspect("equal")
        axes.set_xticks(np.arange(low, high + 1, 30))
        axes.set_title(LABELS[name], fontsize=9)
        axes.set_xlabel("theta1 (degrees)")
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("theta2 (degrees)")
    axes_row[0].legend(fontsize=7, loc="upper left")
    figure.suptitle("Binary decision boundaries: margined target logit of one class = plain cosine of the other")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the two PNGs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    penalty_png = args.out / "margin_penalty.png"
    margins_png = args.out / "decision_margins.png"
    log.info("drawing %s", penalty_png)
    plot_target_logits(penalty_png)
    print(f"margin_penalty_png={penalty_png}")
    log.info("drawing %s", margins_png)
    plot_decision_margins(margins_png)
    print(f"decision_margins_png={margins_png}")

    at = np.array([60.0, 180.0])
    curves = target_logit_curves(at)
    for name in METHODS:
        print(f"{name}_logit_at_60deg={curves[name][0]:.6f}")
    print(f"arcface_logit_at_180deg={curves['arcface'][1]:.6f}")
    print(f"arcface_logit_at_180deg_pi_region_none={target_logit('arcface', at, 'none')[1]:.6f}")
    for name in ("sphereface", "arcface", "combined"):
        print(f"{name}_theta_b_deg={theta_b_deg(name):.2f}")
    theta2 = binary_boundaries(np.array([30.0]))
    for name in METHODS:
        print(f"{name}_boundary_theta2_at_theta1_30deg={theta2[name][0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
