"""Training under ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process, and resharding on resume."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from arcface.cli import main
from arcface.train.checkpoint import list_checkpoints, load_checkpoint
from conftest import REPO_ROOT, run_losses

pytestmark = pytest.mark.slow

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
COMMON = ["data.source=synthetic:96:6", "model.embedding_size=32", "schedule.max_steps=4", "checkpoint.every_steps=0",
          "log_every=1", "threads=1", "precision.autocast=none"]


def _sets(values: list[str]) -> list[str]:
    return sum((["--set", value] for value in values), [])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(args: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               "-m", "arcface.cli", "train", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_two_processes_follow_the_single_process_loss(tmp_path, sample_rate):
    """Same global batch (16), seed and data order. Not bit-equal: each rank's BatchNorm normalizes
    over its own 8 images (SyncBatchNorm needs a GPU), so the trajectories agree within a few percent."""
    settings = COMMON + [f"head.sample_rate={sample_rate}"]
    assert main(["train", SMOKE, "--out", str(tmp_path / "one"), *_sets(settings + ["data.batch_size=16"])]) == 0
    _torchrun([SMOKE, "--out", str(tmp_path / "two"), *_sets(settings + ["data.batch_size=8"])])
    single, double = run_losses(tmp_path / "one"), run_losses(tmp_path / "two")
    assert len(single) == len(double) == 4
    for a, b in zip(single, double):
        assert abs(a - b) / abs(a) < 0.1, (single, double)
    one = load_checkpoint(list_checkpoints(tmp_path / "one")[0])
    two = load_checkpoint(list_checkpoints(tmp_path / "two")[0])
    assert one["head"]["weight"].shape == two["head"]["weight"].shape == (6, 32)  # full centers in both
    assert two["world_size"] == 2


def test_resume_with_another_number_of_processes(tmp_path):
    run = tmp_path / "run"
    _torchrun([SMOKE, "--out", str(run), *_sets(COMMON + ["data.batch_size=8", "schedule.stop_after_steps=2"])])
    saved = load_checkpoint(list_checkpoints(run)[0])
    assert saved["step"] == 2 and saved["world_size"] == 2
    # 2 -> 1 process: the head is re-built whole from the gathered centers; the global batch stays 16.
    assert main(["train", "--resume", str(run), "--set", "schedule.stop_after_steps=3", "--set", "data.batch_size=16"]) == 0
    after = load_checkpoint(list_checkpoints(run)[0])
    assert after["step"] == 3 and after["world_size"] == 1
    momentum = after["head_optimizer"]["state"][0]["momentum_buffer"]
    assert momentum.shape == (6, 32) and torch.isfinite(momentum).all()
    # 1 -> 2 processes again: the centers are split over the ranks.
    _torchrun(["--resume", str(run), "--set", "schedule.stop_after_steps=0", "--set", "data.batch_size=8"])
    final = load_checkpoint(list_checkpoints(run)[0])
    assert final["step"] == 4 and final["world_size"] == 2
    assert all(torch.isfinite(torch.tensor(loss)) for loss in run_losses(run))
