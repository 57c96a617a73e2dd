"""benchmarks/margin_figures.py: the heads' target logits against the paper's closed forms, and the PNGs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "margin_figures.py"


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("margin_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The paper's target logits (ArcFace, TPAMI: Softmax/NormFace, SphereFace m1 = 1.35, CosFace
# m3 = 0.35, ArcFace m2 = 0.5, combined m2 = 0.3 and m3 = 0.2), theta in radians, and the angle in
# degrees up to which each holds (where m1 * theta + m2 reaches pi).
PAPER = {
    "normface": (lambda t: np.cos(t), 180.0),
    "sphereface": (lambda t: np.cos(1.35 * t), math.degrees(math.pi / 1.35)),
    "cosface": (lambda t: np.cos(t) - 0.35, 180.0),
    "arcface": (lambda t: np.cos(t + 0.5), math.degrees(math.pi - 0.5)),
    "combined": (lambda t: np.cos(t + 0.3) - 0.2, math.degrees(math.pi - 0.3)),
}


def test_target_logits_match_the_paper_inside_the_pi_region(figures):
    theta = np.linspace(0.0, 180.0, 1441)
    curves = figures.target_logit_curves(theta)
    assert set(curves) == set(PAPER)
    for name, (formula, limit_deg) in PAPER.items():
        inside = theta <= limit_deg
        expected = formula(np.radians(theta[inside]))
        # Away from 0 and 180 degrees the float64 path is exact; at the ends the heads clamp the
        # cosine to within 1e-7 of +-1 (an angle error of ~4.5e-4 rad).
        interior = (theta[inside] >= 1.0) & (theta[inside] <= 179.0)
        np.testing.assert_allclose(curves[name][inside][interior], expected[interior], atol=1e-9, err_msg=name)
        np.testing.assert_allclose(curves[name][inside], expected, atol=1e-3, err_msg=name)


def test_default_pi_region_keeps_every_curve_decreasing_and_continuous(figures):
    theta = np.linspace(0.0, 180.0, 1441)
    for name, curve in figures.target_logit_curves(theta).items():
        assert np.all(np.diff(curve) < 0), name
        assert np.max(np.abs(np.diff(curve))) < 0.01, name
    # Without the fallback, ArcFace's logit rises again past 180 - 0.5 rad degrees, as cos(theta + 0.5).
    unguarded = figures.target_logit("arcface", theta, pi_region="none")
    np.testing.assert_allclose(unguarded[(theta >= 1) & (theta <= 179)],
                               np.cos(np.radians(theta[(theta >= 1) & (theta <= 179)]) + 0.5), atol=1e-9)
    assert unguarded[-1] > unguarded[theta <= math.degrees(math.pi - 0.5)][-1] + 0.1


def test_binary_boundaries(figures):
    theta1 = np.linspace(1.0, 90.0, 179)
    boundaries = figures.binary_boundaries(theta1)
    t1 = np.radians(theta1)
    np.testing.assert_allclose(boundaries["normface"], theta1, atol=1e-6)
    np.testing.assert_allclose(boundaries["arcface"], np.degrees(t1 + 0.5), atol=1e-6)
    np.testing.assert_allclose(boundaries["sphereface"], 1.35 * theta1, atol=1e-6)
    np.testing.assert_allclose(boundaries["cosface"], np.degrees(np.arccos(np.cos(t1) - 0.35)), atol=1e-6)
    np.testing.assert_allclose(boundaries["combined"], np.degrees(np.arccos(np.cos(t1 + 0.3) - 0.2)), atol=1e-6)
    # CosFace's target logit leaves [-1, 1] past arccos(-0.65) = 130.5 degrees: no boundary there.
    assert np.isnan(figures.binary_boundaries(np.array([150.0]))["cosface"][0])


def test_main_writes_two_pngs(figures, tmp_path, capsys):
    assert figures.main(["--out", str(tmp_path)]) == 0
    for name in ("margin_penalty.png", "decision_margins.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert printed["margin_penalty_png"] == str(tmp_path / "margin_penalty.png")
    assert printed["decision_margins_png"] == str(tmp_path / "decision_margins.png")
    assert float(printed["arcface_logit_at_60deg"]) == pytest.approx(math.cos(math.pi / 3 + 0.5), abs=1e-6)
