"""Training end to end on synthetic data: outputs, exact kill-and-resume, corrupt checkpoints, bad config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arcface.cli import main
from arcface.train.checkpoint import list_checkpoints, load_checkpoint
from conftest import REPO_ROOT, run_losses

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
# A very small run: 8 steps of batch 8 over 96 images (12 batches per epoch, so a kill lands mid-epoch).
TINY = ["data.source=synthetic:96:6", "data.batch_size=8", "model.embedding_size=32", "schedule.max_steps=8",
        "checkpoint.every_steps=3", "checkpoint.keep_last=5", "log_every=1", "threads=2"]


def _run(args: list[str]) -> int:
    return main(["train", *args])


def _final_weights(run_dir: Path) -> dict:
    state = load_checkpoint(list_checkpoints(run_dir)[0])
    return {"backbone": state["backbone"], "head": state["head"], "step": state["step"]}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("backbone", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs"


def test_smoke_run_writes_a_complete_run_folder(tmp_path):
    run = tmp_path / "run"
    assert _run([SMOKE, "--out", str(run), "--set", "schedule.max_steps=4", "--set", "checkpoint.every_steps=2"]) == 0
    assert sorted(p.name for p in list_checkpoints(run)) == ["step_00000002.pt", "step_00000004.pt"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1]  # log_every=5: step 1 only
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines)
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    state = load_checkpoint(run / "checkpoints" / "step_00000004.pt")
    assert state["config"]["model"]["backbone"] == "mobilefacenet" and state["num_classes"] == 16
    assert state["head"]["weight"].shape == (16, 128)
    assert (run / "config.yaml").read_text().startswith("data:")


@pytest.mark.parametrize("augment", [[], ["data.augment.scale=0.1", "data.augment.rotate=10", "data.augment.erase=0.5"]], ids=["flips", "augment"])
def test_resume_in_process_gives_the_same_weights(tmp_path, augment):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    settings = TINY + augment + ["schedule.max_steps=14"]  # 14 steps of 8 from 96 images: two epochs
    assert _run([SMOKE, "--out", str(straight), *sum((["--set", s] for s in settings), [])]) == 0
    # Stop at step 5 (checkpoints at 3 and 5) without changing the schedule, then continue.
    assert _run([SMOKE, "--out", str(interrupted), *sum((["--set", s] for s in settings + ["schedule.stop_after_steps=5"]), [])]) == 0
    assert load_checkpoint(list_checkpoints(interrupted)[0])["step"] == 5
    assert _run(["--resume", str(interrupted), "--set", "schedule.stop_after_steps=0"]) == 0
    _assert_same_weights(_final_weights(straight), _final_weights(interrupted))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_identical_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    settings = sum((["--set", s] for s in TINY + ["schedule.max_steps=10"]), [])
    assert _run([SMOKE, "--out", str(straight), *settings]) == 0
    command = [sys.executable, "-m", "arcface.cli", "train", SMOKE, "--out", str(killed), *settings]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step_00000006.pt").exists():  # two checkpoints written, mid-epoch
        assert process.poll() is None and time.monotonic() < deadline, "training ended or hung before the kill"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert _run(["--resume", str(killed)]) == 0
    _assert_same_weights(_final_weights(straight), _final_weights(killed))


def test_corrupt_checkpoint_is_a_clear_error_and_fallback_uses_the_previous(tmp_path, caplog):
    run = tmp_path / "run"
    assert _run([SMOKE, "--out", str(run), *sum((["--set", s] for s in TINY + ["schedule.max_steps=6"]), [])]) == 0
    newest = list_checkpoints(run)[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    assert _run(["--resume", str(run)]) == 2
    assert "truncated or corrupt" in caplog.text and "--fallback" in caplog.text
    assert _run(["--resume", str(run), "--fallback", "--set", "schedule.max_steps=7"]) == 0
    assert load_checkpoint(list_checkpoints(run)[0])["step"] == 7


def test_bad_config_values_exit_nonzero_with_the_key(tmp_path, caplog):
    assert _run([SMOKE, "--out", str(tmp_path / "a"), "--set", "optim.lr=-1"]) == 2
    assert "optim.lr must be > 0" in caplog.text
    assert _run([SMOKE, "--out", str(tmp_path / "b"), "--set", "optim.lrr=1"]) == 2
    assert "unknown config key(s): optim.lrr" in caplog.text
    assert _run([str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "c")]) == 2
    assert _run([SMOKE, "--out", str(tmp_path / "d"), "--set", "precision.autocast=fp16"]) == 2
    assert "needs a GPU" in caplog.text
    assert _run(["--resume", str(tmp_path / "nothing")]) == 2


def test_nonfinite_losses_are_skipped_then_stop_training(tmp_path, monkeypatch, caplog):
    from arcface.heads.margin_head import MarginHead

    original = MarginHead.forward
    monkeypatch.setattr(MarginHead, "forward", lambda self, x, y: original(self, x, y) * float("nan"))
    assert _run([SMOKE, "--out", str(tmp_path / "nan"), *sum((["--set", s] for s in TINY + ["precision.max_nonfinite_in_a_row=3"]), [])]) == 2
    assert "non-finite for 3 steps in a row" in caplog.text
    assert caplog.text.count("step skipped") == 3


def test_compile_failure_falls_back_to_eager_with_the_same_weights(tmp_path, monkeypatch, caplog):
    import arcface.train.loop as loop

    def broken(*args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return compiled

    eager, fallback = tmp_path / "eager", tmp_path / "fallback"
    assert _run([SMOKE, "--out", str(eager), *sum((["--set", s] for s in TINY), [])]) == 0
    monkeypatch.setattr(loop.torch, "compile", broken)
    assert _run([SMOKE, "--out", str(fallback), *sum((["--set", s] for s in TINY + ["model.compile=true"]), [])]) == 0
    assert "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found); training eagerly" in caplog.text
    _assert_same_weights(_final_weights(eager), _final_weights(fallback))


@pytest.mark.slow
def test_compiled_training_follows_the_eager_loss_and_keeps_plain_checkpoints(tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    # fp32: under bf16 autocast the compiled graph rounds at other places (about 1% on the first loss).
    # A few steps only: with s=64 and lr 0.05 rounding differences grow fast (1.4% of the loss by step 6).
    settings = TINY + ["schedule.max_steps=3", "precision.autocast=none"]
    assert _run([SMOKE, "--out", str(eager), *sum((["--set", s] for s in settings), [])]) == 0
    from torch._dynamo.utils import counters

    counters.clear()
    assert _run([SMOKE, "--out", str(compiled), *sum((["--set", s] for s in settings + ["model.compile=true"]), [])]) == 0
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled path really ran
    expected, actual = run_losses(eager), run_losses(compiled)
    assert len(expected) == len(actual) == 3
    # Fused kernels round differently, so the trajectories agree closely but not bit for bit.
    assert actual == pytest.approx(expected, rel=2e-3)
    plain, optimized = _final_weights(eager), _final_weights(compiled)
    assert plain["backbone"].keys() == optimized["backbone"].keys()  # no "_orig_mod." prefixes
    for key, value in plain["backbone"].items():
        if value.is_floating_point():
            torch.testing.assert_close(optimized["backbone"][key], value, rtol=1e-2, atol=1e-3, msg=key)


def test_model_init_from_starts_the_backbone_from_a_checkpoint(tmp_path, caplog):
    from arcface.train.config import load_config
    from arcface.train.distributed import DistributedContext
    from arcface.train.loop import _Run

    source = tmp_path / "source"
    assert _run([SMOKE, "--out", str(source), *sum((["--set", s] for s in TINY), [])]) == 0
    trained = _final_weights(source)["backbone"]

    def starting_backbone(*settings: str) -> dict:
        return _Run(load_config(SMOKE, [*TINY, *settings]), tmp_path / "unused", DistributedContext(), False, False, []).backbone.state_dict()

    # From the run folder (its newest checkpoint): every tensor equals the trained one, BatchNorm statistics too.
    started = starting_backbone(f"model.init_from={source}")
    assert started.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(started[key], value), key
    # Without it, a random start that differs from the trained weights.
    fresh = starting_backbone()
    assert any(not torch.equal(fresh[key], value) for key, value in trained.items() if value.is_floating_point())

    # A checkpoint of another shape is a clear error naming the option; so is a missing one.
    assert _run([SMOKE, "--out", str(tmp_path / "b"), *sum((["--set", s] for s in TINY), []),
                 "--set", "model.embedding_size=16", "--set", f"model.init_from={source}"]) != 0
    assert "model.init_from" in caplog.text and "32-D embeddings" in caplog.text
    assert _run([SMOKE, "--out", str(tmp_path / "c"), "--set", f"model.init_from={tmp_path / 'missing.pt'}"]) != 0
    assert "checkpoint not found" in caplog.text
