"""Shared test helpers: where the real data and fixtures live (``../shared`` beside the repo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARCFACE_SHARED", REPO_ROOT.parent / "shared"))


def shared_path(relative: str) -> Path:
    """A path under shared/, or skip the test with the reason when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (real data and fixtures live in ../shared; set ARCFACE_SHARED to move it)")
    return path


def run_losses(run_dir: Path) -> list[float]:
    """The training losses a run logged to its metrics.jsonl, in order."""
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(autouse=True)
def _model_home(tmp_path_factory, monkeypatch):
    """Each test gets an empty model home: nothing from the user's $ARCFACE_HOME (a pulled detector, a
    registered model) changes what a test sees, and nothing a test writes lands there."""
    monkeypatch.setenv("ARCFACE_HOME", str(tmp_path_factory.mktemp("arcface_home")))


@pytest.fixture
def onnx_runtime():
    """Skip the test unless onnx (to build test models) and onnxruntime (to run them) are installed;
    the other tests of a module run without them."""
    pytest.importorskip("onnx", reason="building test ONNX models needs the onnx package (pip install -e '.[test]')")
    pytest.importorskip("onnxruntime", reason="ONNX models need onnxruntime (pip install -e '.[test]')")
