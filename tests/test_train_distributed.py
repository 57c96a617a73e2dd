"""Training under ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process, step for step.

Two processes of 8 images must take the optimizer steps of one process of 16: same data order, same
global mean loss, same gradient. BatchNorm normalizes over the images of one forward pass, so where a
real backbone is compared, the single process runs its 16 images as 2 accumulated micro-batches of 8
(exactly the two ranks' halves of the global batch); a backbone without BatchNorm
(``train_helpers.TinyNoBN``) lets a resume change the number of processes at the same global batch.

Both sides train in float64 (``train_helpers.default_dtype``): in float32 the gradient of a BatchNorm
network at the start of training carries rounding errors of 0.5% (one process with 1 thread against 2
threads differ that much after one step), too coarse to tell a wrong number from rounding. In float64
the runs agree to 1e-13, so a lost factor (partial FC's all-gather backward sized for DDP's averaging),
a missing or wrong all-reduce, or a dropped optimizer state fails by many orders of magnitude.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arcface.cli import main
from arcface.train.checkpoint import list_checkpoints, load_checkpoint
from conftest import REPO_ROOT, run_losses
from train_helpers import TINY_BACKBONE, default_dtype, final_parameters, initial_parameters, register

register()

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
WORKER = str(Path(__file__).with_name("train_helpers.py"))
# No autocast, one thread per process, no warmup (the first step moves the weights). No gradient
# clipping: clipping rescales a too-large gradient to a fixed norm, and so would hide exactly the wrong
# factors this file looks for.
COMMON = ["data.source=synthetic:96:6", "model.embedding_size=32", "checkpoint.every_steps=0", "log_every=1", "threads=1",
          "precision.autocast=none", "schedule.warmup_fraction=0", "optim.grad_clip=0"]
# The gap between two runs' weights, as a fraction of the distance training moved them (backbone and
# head apart). float64 rounding in other summation orders gives about 1e-13; a factor of 2 gives 0.3.
TOLERANCE = 1e-9


def _sets(values: list[str]) -> list[str]:
    return sum((["--set", value] for value in values), [])


def _train(args: list[str]) -> None:
    """``arcface train ARGS`` in this process, in float64."""
    with default_dtype(torch.float64):
        assert main(["train", *args]) == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(args: list[str]) -> None:
    """``arcface train ARGS`` in 2 processes, in float64 (``train_helpers.py`` is the command line with
    the tiny backbone registered)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               WORKER, "--float64", "train", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def _initial_weights(settings: list[str], tmp_path: Path) -> dict[str, torch.Tensor]:
    """What a float64 run with ``settings`` starts from."""
    with default_dtype(torch.float64):
        return initial_parameters(SMOKE, settings, tmp_path / "unused")


def _assert_same_updates(actual: dict, expected: dict, initial: dict) -> None:
    """``actual`` and ``expected`` moved the same way from ``initial``: the backbone's and the head's
    parameters each differ by at most TOLERANCE times how far training moved them."""
    assert actual.keys() == expected.keys() == initial.keys()
    for part in ("backbone.", "head."):
        keys = [key for key in expected if key.startswith(part)]
        assert all(expected[key].dtype == torch.float64 for key in keys)
        moved = sum(float((expected[key] - initial[key]).norm()) ** 2 for key in keys) ** 0.5
        gap = sum(float((actual[key] - expected[key]).norm()) ** 2 for key in keys) ** 0.5
        assert moved > 1e-3, f"training did not move the {part[:-1]}: nothing to compare"
        worst = max(keys, key=lambda key: float((actual[key] - expected[key]).norm()))
        assert gap <= TOLERANCE * moved, f"{part[:-1]}: the runs differ by {gap:.3g} (most in {worst}), training moved it by {moved:.3g}"


@pytest.mark.parametrize("backbone", [TINY_BACKBONE, pytest.param("mobilefacenet", marks=pytest.mark.slow)])
def test_two_processes_take_the_single_process_steps(tmp_path, backbone):
    """arcface head, 2 steps: 2 ranks x 8 images against 1 process x 2 accumulated micro-batches of 8.
    The second step also checks the momentum of both optimizers. MobileFaceNet (BatchNorm, channels
    last) is the real path; the tiny backbone keeps the check in the default suite (a few seconds)."""
    settings = COMMON + [f"model.backbone={backbone}", "schedule.max_steps=2", "data.batch_size=8"]
    _train([SMOKE, "--out", str(tmp_path / "one"), *_sets(settings + ["optim.accumulation=2"])])
    _torchrun([SMOKE, "--out", str(tmp_path / "two"), *_sets(settings)])
    single, double = run_losses(tmp_path / "one"), run_losses(tmp_path / "two")
    assert len(single) == len(double) == 2
    assert double == pytest.approx(single, rel=TOLERANCE)  # the global mean loss, before and after a step
    two = load_checkpoint(list_checkpoints(tmp_path / "two")[0])
    assert two["world_size"] == 2 and two["head"]["weight"].shape == (6, 32)  # the full centers, gathered
    _assert_same_updates(final_parameters(tmp_path / "two"), final_parameters(tmp_path / "one"), _initial_weights(settings, tmp_path))


@pytest.mark.slow
def test_two_processes_with_class_sampling_take_the_single_process_steps(tmp_path):
    """head.sample_rate=0.5 (partial FC v2) in both runs, tiny backbone, one process of 16 against 2 x 8
    (not accumulated micro-batches: one process samples centers per micro-batch, from its labels only).
    With 4 classes every global batch holds all of them (checked below), so every center is sampled and
    the runs must agree through the sampling path (each shard's positives, the index gather, the
    weight gradient of the sampled rows)."""
    from arcface.train.sampler import EpochSampler

    settings = COMMON + [f"model.backbone={TINY_BACKBONE}", "data.source=synthetic:96:4", "schedule.max_steps=3", "head.sample_rate=0.5"]
    batches = list(EpochSampler(96, 16, seed=0, flip=True))[:3]
    assert all({index % 96 % 4 for index in batch} == {0, 1, 2, 3} for batch in batches)
    _train([SMOKE, "--out", str(tmp_path / "one"), *_sets(settings + ["data.batch_size=16"])])
    _torchrun([SMOKE, "--out", str(tmp_path / "two"), *_sets(settings + ["data.batch_size=8"])])
    assert run_losses(tmp_path / "two") == pytest.approx(run_losses(tmp_path / "one"), rel=TOLERANCE)
    _assert_same_updates(final_parameters(tmp_path / "two"), final_parameters(tmp_path / "one"), _initial_weights(settings, tmp_path))


@pytest.mark.slow
def test_resume_with_another_number_of_processes_equals_a_straight_run(tmp_path):
    """2 processes -> 1 -> 2 at a global batch of 16 against one straight single-process run: the centers
    and the head's momentum are gathered into the checkpoint and re-split on resume."""
    settings = COMMON + [f"model.backbone={TINY_BACKBONE}", "schedule.max_steps=6"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    _train([SMOKE, "--out", str(straight), *_sets(settings + ["data.batch_size=16"])])

    _torchrun([SMOKE, "--out", str(run), *_sets(settings + ["data.batch_size=8", "schedule.stop_after_steps=2"])])
    saved = load_checkpoint(list_checkpoints(run)[0])
    assert saved["step"] == 2 and saved["world_size"] == 2
    # 2 -> 1 process: the head is re-built whole from the gathered centers and momentum.
    _train(["--resume", str(run), "--set", "schedule.stop_after_steps=4", "--set", "data.batch_size=16"])
    after = load_checkpoint(list_checkpoints(run)[0])
    assert after["step"] == 4 and after["world_size"] == 1
    assert after["head_optimizer"]["state"][0]["momentum_buffer"].shape == (6, 32)
    # 1 -> 2 processes again: the centers and their momentum are split over the ranks.
    _torchrun(["--resume", str(run), "--set", "schedule.stop_after_steps=0", "--set", "data.batch_size=8"])
    final = load_checkpoint(list_checkpoints(run)[0])
    assert final["step"] == 6 and final["world_size"] == 2

    assert run_losses(run) == pytest.approx(run_losses(straight), rel=TOLERANCE)
    _assert_same_updates(final_parameters(run), final_parameters(straight), _initial_weights(settings, tmp_path))
