"""Training and data writers that never lose a good state: the NaN guard, one writer per run folder,
full disks, bad values, odd images and labels, and one-line errors instead of tracebacks."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from arcface.cli import main
from arcface.data.errors import DataError
from arcface.train.checkpoint import list_checkpoints, load_checkpoint, nonfinite_tensors
from conftest import REPO_ROOT

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
# A very small run: batch 8 over 96 images, 32-D embeddings, a checkpoint every step.
TINY = ["data.source=synthetic:96:6", "data.batch_size=8", "model.embedding_size=32", "schedule.max_steps=6",
        "checkpoint.every_steps=1", "checkpoint.keep_last=2", "log_every=1", "threads=2"]


def _sets(settings: list[str]) -> list[str]:
    return sum((["--set", s] for s in settings), [])


def _train(*args: str) -> int:
    return main(["train", *args])


def _errors(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


def _strict_lines(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _all_files_finite(run: Path) -> list[str]:
    """Names of the files in run/checkpoints that hold a non-finite tensor (every file must load)."""
    bad = []
    for path in sorted((run / "checkpoints").iterdir()):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if nonfinite_tensors(state):
            bad.append(path.name)
    return bad


# ----------------------------------------------------------------------------------- 1. the NaN guard
def test_divergence_keeps_the_good_checkpoint_and_only_finite_files(tmp_path, caplog):
    """The issue's sequence: a good run, a resume at lr 1e6 (diverges), a resume at a sane lr."""
    run = tmp_path / "run"
    settings = TINY + ["schedule.max_steps=12", "schedule.stop_after_steps=4", "checkpoint.every_steps=2"]
    assert _train(SMOKE, "--out", str(run), *_sets(settings)) == 0
    good = load_checkpoint(run / "checkpoints" / "step_00000004.pt")
    assert _train("--resume", str(run), *_sets(["optim.lr=1e6", "checkpoint.every_steps=3", "schedule.stop_after_steps=0"])) == 2
    message = _errors(caplog)[-1]
    assert "the model is no longer finite" in message and "training diverged" in message
    assert _all_files_finite(run) == []
    # The good state before the divergence survives keep_last=2 and is where --resume goes on.
    assert list_checkpoints(run)[0].name == "step_00000004.pt" and f"{list_checkpoints(run)[0]}: --resume" in message
    survivor = load_checkpoint(run / "checkpoints" / "step_00000004.pt")
    for key, value in good["backbone"].items():
        assert torch.equal(value, survivor["backbone"][key]), key
    assert _train("--resume", str(run), *_sets(["optim.lr=0.05", "schedule.stop_after_steps=0"])) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["nonfinite_skipped"] == 0
    assert _all_files_finite(run) == []
    steps = [line["step"] for line in _strict_lines(run / "metrics.jsonl") if "loss" in line]
    assert steps == sorted(set(steps))  # no step logged twice across the three commands


@pytest.fixture
def nan_after(monkeypatch):
    """Make the loss NaN from the n-th head call on (the weights stay finite: the step is skipped)."""
    from arcface.heads.margin_head import MarginHead

    original = MarginHead.forward
    calls = {"n": 0, "from": None}

    def forward(self, x, y):
        calls["n"] += 1
        loss = original(self, x, y)
        return loss * float("nan") if calls["from"] is not None and calls["n"] >= calls["from"] else loss

    monkeypatch.setattr(MarginHead, "forward", forward)

    def start(n: int) -> None:
        calls["n"], calls["from"] = 0, n

    return start


def test_nonfinite_streak_counter_survives_a_resume(tmp_path, caplog, nan_after):
    run = tmp_path / "run"
    nan_after(3)  # steps 3 and 4 skipped before the stop: two in a row saved in the checkpoint
    settings = TINY + ["precision.max_nonfinite_in_a_row=3", "checkpoint.keep_last=1", "schedule.stop_after_steps=4"]
    assert _train(SMOKE, "--out", str(run), *_sets(settings)) == 0
    state = load_checkpoint(list_checkpoints(run)[0])
    assert state["step"] == 4 and state["position"]["nonfinite_in_a_row"] == 2
    # keep_last=1, yet step 1's state, the newest whose next step was finite, is kept besides the newest.
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004.pt", "step_00000001.pt"]
    assert [line["loss"] for line in _strict_lines(run / "metrics.jsonl")][2:] == [None, None]  # NaN as null
    nan_after(1)
    assert _train("--resume", str(run), *_sets(["schedule.stop_after_steps=0"])) == 2
    assert "non-finite for 3 steps in a row (step 5)" in _errors(caplog)[-1]
    # The streak's states (from step 2's on) would give it again: set aside; the resume point is step 1.
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001.pt"]
    assert "newest checkpoint before the divergence is" in _errors(caplog)[-1] and "step_00000001.pt" in _errors(caplog)[-1]


def test_resume_refuses_a_nonfinite_checkpoint_and_names_the_good_one(tmp_path, caplog):
    run = tmp_path / "run"
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.max_steps=3"])) == 0
    state = load_checkpoint(run / "checkpoints" / "step_00000003.pt")
    first = next(iter(state["backbone"]))
    state["backbone"][first].fill_(float("nan"))  # as an older version could write it
    state["step"], state["position"]["step"] = 5, 5
    torch.save(state, run / "checkpoints" / "step_00000005.pt")
    assert _train("--resume", str(run), *_sets(["schedule.max_steps=6"])) == 2
    message = _errors(caplog)[-1]
    assert f"step_00000005.pt: non-finite values in backbone.{first}" in message
    assert "newest checkpoint with finite weights is step_00000003.pt: pass --fallback" in message
    assert _train("--resume", str(run), "--fallback", *_sets(["schedule.max_steps=6"])) == 0
    assert (run / "checkpoints" / "step_00000005.pt.nonfinite").is_file()
    assert load_checkpoint(list_checkpoints(run)[0])["step"] == 6 and _all_files_finite(run) == ["step_00000005.pt.nonfinite"]


def test_a_state_that_is_not_finite_is_never_written(tmp_path, monkeypatch, caplog):
    """Optimizer moments gone infinite: that checkpoint is skipped, the next update stops the run."""
    import arcface.train.loop as loop

    original = loop._Run._optimizer_step

    def poison(self, finite):
        original(self, finite)
        if self.position.step == 1:  # step 2's update
            next(iter(self.backbone_optimizer.state.values()))["momentum_buffer"].fill_(float("inf"))

    monkeypatch.setattr(loop._Run, "_optimizer_step", poison)
    run = tmp_path / "run"
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.max_steps=4"])) == 2
    assert "step 2: non-finite values in backbone_optimizer.state." in caplog.text and "checkpoint not written" in caplog.text
    assert _errors(caplog)[-1].startswith("step 3: the model is no longer finite (backbone.")
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001.pt"] and _all_files_finite(run) == []


# ----------------------------------------------------------------------------- 2/3. the run folder
_HOLDER = """
import sys, time
from arcface.train.run_folder import RunFolderLock
RunFolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _hold_lock(run: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_writer_is_refused_and_a_killed_holder_frees_the_folder(tmp_path, caplog):
    run = tmp_path / "run"
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.max_steps=2"])) == 0
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    holder = _hold_lock(run)  # another training resuming this run
    try:
        assert _train("--resume", str(run), *_sets(["schedule.max_steps=3"])) == 2
        assert _errors(caplog)[-1] == f"run folder {run} is in use by another training (pid {holder.pid}); wait for it to end, or use another --out"
        assert _train(SMOKE, "--out", str(run), "--overwrite", *_sets(TINY)) == 2  # not even --overwrite
        after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
        assert after == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The operating system released the crashed holder's lock: nothing stale to clean up.
    assert _train("--resume", str(run), *_sets(["schedule.max_steps=3"])) == 0


def test_folder_of_another_run_without_checkpoints_needs_overwrite(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 7\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (run / "notes.txt").write_text("mine\n")
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.max_steps=2"])) == 2
    assert "holds another run's files (config.yaml, metrics.jsonl) but no checkpoint" in _errors(caplog)[-1]
    assert (run / "config.yaml").read_text() == "seed: 7\n" and not (run / "checkpoints").exists()
    assert _train(SMOKE, "--out", str(run), "--overwrite", *_sets(TINY + ["schedule.max_steps=2"])) == 0
    assert [line["step"] for line in _strict_lines(run / "metrics.jsonl")] == [1, 2]
    assert (run / "notes.txt").read_text() == "mine\n"  # not a run file: left alone
    assert _train(SMOKE, "--out", str(run), *_sets(TINY)) == 2
    assert "already holds checkpoints (newest step_00000002.pt)" in _errors(caplog)[-1]


@pytest.mark.slow
def test_two_trainings_started_together_exactly_one_runs(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "arcface.cli", "train", SMOKE, "--out", str(run), *_sets(["schedule.max_steps=6"])]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2]
    refused = next(err for code, err in results if code == 2)
    assert "is in use by another training (pid" in refused or "already holds checkpoints" in refused
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert [line["step"] for line in _strict_lines(run / "metrics.jsonl")] == [1, 5]


# ------------------------------------------------------------------------------------- 4/7/8. bad values
@pytest.mark.parametrize("setting, message", [
    ("optim.lr=inf", "optim.lr must be a finite number, got inf"),
    ("optim.momentum=nan", "optim.momentum must be a finite number, got nan"),
    ("schedule.power=nan", "schedule.power must be a finite number, got nan"),
    ("optim.betas=[0.9, .inf]", "optim.betas[1] must be a finite number, got inf"),
    ("head.scale=-.inf", "head.scale must be a finite number, got -inf"),
    ("head.m2=nan", "head.m2 must be a finite number, got nan"),
    ("head.options={intra_weight: .nan}", "head.options.intra_weight must be a finite number, got nan"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
    ("log_every=0", "log_every must be >= 1"),
    ("threads=-1", "threads must be >= 0"),
    ("threads=100000000000000000000", "threads: 100000000000000000000 is out of range"),
    ("schedule.max_steps=-5", "schedule.max_steps must be >= 0"),
    ("checkpoint.every_minutes=-1", "checkpoint.every_minutes must be >= 0"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps must be >= 0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
])
def test_bad_values_exit_2_before_training(tmp_path, caplog, setting, message):
    run = tmp_path / "run"
    assert _train(SMOKE, "--out", str(run), "--set", setting) == 2
    assert message in _errors(caplog)[-1] and "\n" not in _errors(caplog)[-1]
    assert not run.exists()  # refused before anything is written


# --------------------------------------------------------------------------- 7. resume with other settings
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("small") / "run"
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.max_steps=2"])) == 0
    return run


@pytest.mark.parametrize("setting, key", [
    ("model.backbone=iresnet18", "model.backbone"), ("model.embedding_size=64", "model.embedding_size"),
    ("head.name=cosface", "head.name"), ("optim.name=adamw", "optim.name"), ("head.sub_centers=3", "head.sub_centers"),
])
def test_resume_with_changed_model_or_optimizer_names_the_setting(small_run, caplog, setting, key):
    before = {p.name: p.read_bytes() for p in (small_run / "checkpoints").iterdir()}
    assert _train("--resume", str(small_run), "--set", setting, *_sets(["schedule.max_steps=3"])) == 2
    message = _errors(caplog)[-1]
    assert message.startswith(f"--resume {small_run}: {key} is ") and "cannot be carried over" in message
    assert {p.name: p.read_bytes() for p in (small_run / "checkpoints").iterdir()} == before


def test_malicious_checkpoint_is_refused_without_torch_advice(tmp_path, caplog):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"config": {}, "step": 1, "x": Payload()}, run / "checkpoints" / "step_00000001.pt")
    assert _train("--resume", str(run)) == 2
    message = _errors(caplog)[-1]
    assert "refused" in message and ("posix.system" in message or "os.system" in message)
    assert "weights_only" not in message.lower() and "trusted source" not in message
    from arcface.model import load_face_model

    with pytest.raises(DataError) as refused:  # the evaluation's loader says no the same way
        load_face_model(run / "checkpoints" / "step_00000001.pt")
    assert "posix.system" in str(refused.value) or "os.system" in str(refused.value)
    assert "weights_only" not in str(refused.value).lower() and "\n" not in str(refused.value)


# ------------------------------------------------------------------------------------- 5. full disk
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, caplog):
    import arcface.train.checkpoint as checkpoint

    run = tmp_path / "run"
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.max_steps=2"])) == 0
    kept = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}

    def full_disk(state, handle):
        handle.write(b"PK\x03\x04" + b"\0" * 4096)  # part of a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    assert _train("--resume", str(run), *_sets(["schedule.max_steps=4"])) == 2
    message = _errors(caplog)[-1]
    assert "step_00000003.pt: cannot write (No space left on device)" in message and "\n" not in message
    assert "newest checkpoint:" in message and "step_00000002.pt" in message
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == kept  # no partial file, old ones intact


def test_zip_writer_failure_is_a_checkpoint_error_without_partial(tmp_path, monkeypatch):
    import arcface.train.checkpoint as checkpoint

    target = tmp_path / "best.pt"
    target.write_bytes(b"old")

    def broken(state, handle):
        handle.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: file write failed\nmore")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(checkpoint.CheckpointError, match=r"best.pt: cannot write \(\[enforce fail.*file write failed\); the previous file is unchanged$"):
        checkpoint.atomic_torch_save({"x": 1}, target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails every write as a full disk does."""

    def __init__(self, path, room: int):
        self._file, self._room = open(path, "wb", buffering=0), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def _faces(root: Path, per_identity: int = 4, identities: int = 3) -> None:
    rng = np.random.default_rng(0)
    for identity in range(identities):
        (root / f"id{identity}").mkdir(parents=True)
        for index in range(per_identity):
            cv2.imwrite(str(root / f"id{identity}" / f"{index:03d}.png"), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))


def test_pack_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, caplog):
    import arcface.data.recordio as recordio

    _faces(tmp_path / "faces")
    out = tmp_path / "out"
    out.mkdir()

    def fake_open(path, mode="r", *args, **kwargs):
        if "b" in mode and "w" in mode:
            return io.BufferedWriter(_FullDisk(path, room=50_000))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(recordio, "open", fake_open, raising=False)
    assert main(["data", "pack", str(tmp_path / "faces"), str(out / "train.rec")]) == 2
    assert "No space left on device" in _errors(caplog)[-1]
    assert sorted(p.name for p in out.iterdir()) == []


def test_export_failure_removes_its_temporary_file(tmp_path, monkeypatch):
    from arcface.backbones import create_backbone
    from arcface.export import onnx as export

    def full_disk(model, example, path, **kwargs):
        Path(path).write_bytes(b"\x08\x07partial graph")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(export.torch.onnx, "export", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export.export_onnx(create_backbone("mobilefacenet", embedding_size=32), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_embedding_cache_is_a_warning(tmp_path, monkeypatch, caplog):
    from arcface.eval import cache as cache_module

    cache = cache_module.EmbeddingCache(tmp_path, "key")
    cache.add(["a.jpg"], np.ones((1, 4), np.float32), [0])

    def full_disk(path, **arrays):
        Path(path).write_bytes(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cache_module.np, "savez", full_disk)
    assert cache.save() is False
    assert "embedding cache not written" in caplog.text and "No space left on device" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_unpack_writes_its_completion_marker_last(tmp_path, monkeypatch):
    import arcface.data.pack as pack

    _faces(tmp_path / "faces")
    assert main(["data", "pack", str(tmp_path / "faces"), str(tmp_path / "rec" / "train.rec")]) == 0
    out = tmp_path / "unpacked"
    assert main(["data", "unpack", str(tmp_path / "rec" / "train.rec"), str(out)]) == 0
    marker = json.loads((out / "unpack_complete.json").read_text())
    assert marker["images"] == 12 and marker["classes"] == 3
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0", "1", "2"]

    original = pack.FaceRecordFile.image_bytes
    calls = {"n": 0}

    def killed_half_way(self, key):
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt
        return original(self, key)

    monkeypatch.setattr(pack.FaceRecordFile, "image_bytes", killed_half_way)
    assert main(["data", "unpack", str(tmp_path / "rec" / "train.rec"), str(out)]) == 130
    assert not (out / "unpack_complete.json").exists()  # the re-run did not finish: the folder says so


# ------------------------------------------------------------------------------ 4/7. images and labels
@pytest.mark.parametrize("size", [(1, 1), (3000, 2000)], ids=["1x1", "3000x2000"])
def test_wrong_size_image_is_named_or_skipped_and_counted(tmp_path, caplog, size):
    faces = tmp_path / "faces"
    _faces(faces, per_identity=4, identities=3)
    bad = [faces / "id0" / "001.png", faces / "id2" / "002.png"]
    for path in bad:
        cv2.imwrite(str(path), np.zeros((*size, 3), np.uint8))
    settings = [f"data.source={faces}", "data.batch_size=4", "data.num_workers=2", "schedule.max_steps=3", "model.embedding_size=32",
                "checkpoint.every_steps=0", "log_every=1", "threads=2"]
    assert _train(SMOKE, "--out", str(tmp_path / "strict"), *_sets(settings)) == 2
    message = _errors(caplog)[-1]
    assert f"image is {size[1]}x{size[0]}, training takes aligned 112x112 faces" in message and "\n" not in message
    assert any(str(path) in message for path in bad)
    # With skip_bad the run goes on: 3 steps x 4 = one pass over the 12 images, each bad one replaced once.
    assert _train(SMOKE, "--out", str(tmp_path / "skip"), *_sets(settings + ["data.skip_bad=true"])) == 0
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_bad_samples"] == 2


def test_label_out_of_range_and_gaps(tmp_path, caplog):
    from arcface.data.datasets import ListDataset

    _faces(tmp_path / "faces", per_identity=2, identities=2)
    listing = tmp_path / "list.txt"
    listing.write_text("faces/id0/000.png 0\nfaces/id1/000.png 99999999999999999999\n")
    assert _train(SMOKE, "--out", str(tmp_path / "run"), "--set", f"data.source={listing}") == 2
    assert "list.txt:2: label 99999999999999999999 is not a class id (0..16777215)" in _errors(caplog)[-1]
    listing.write_text("faces/id0/000.png 0\nfaces/id0/001.png 0\nfaces/id1/000.png 5\nfaces/id1/001.png 5\n")
    dataset = ListDataset(listing)
    assert dataset.num_classes == 6
    assert "4 class ids have no image (1, 2, 3, 4) among 0..5" in caplog.text


def test_rec_label_out_of_range_is_refused_and_unpack_writes_nothing(tmp_path, caplog):
    from arcface.data.recordio import RecordHeader, RecordWriter, pack_record

    png = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    with RecordWriter(tmp_path / "im2rec.rec") as writer:
        writer.write(0, pack_record(RecordHeader.of(0.0), png))
        writer.write(1, pack_record(RecordHeader.of(1e30), png))
    out = tmp_path / "out"
    assert main(["data", "unpack", str(tmp_path / "im2rec.rec"), str(out)]) == 2
    assert "key 1: label 1e+30 is not a class id (an integer in 0..16777215)" in _errors(caplog)[-1]
    assert not out.exists()


# ---------------------------------------------------------------------- 7/9. paths, metrics, eval device
def test_pair_paths_stay_inside_the_image_root(tmp_path):
    from arcface.data.protocols import PAIRS_HEADER, read_pairs

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"{PAIRS_HEADER}\na/1.jpg\t../../../../etc/passwd\t1\t0\n")
    with pytest.raises(DataError, match=r"pairs.tsv: line 2: image path '../../../../etc/passwd' leaves the image root"):
        read_pairs(pairs)
    pairs.write_text(f"{PAIRS_HEADER}\n/etc/hostname\ta/1.jpg\t1\t0\n")
    with pytest.raises(DataError, match="leaves the image root"):
        read_pairs(pairs)
    assert read_pairs(pairs, allow_outside=True)[0].left == "/etc/hostname"
    lfw = tmp_path / "pairsDevTest.txt"
    lfw.write_text("1\n../x 1 2\na 1 b 1\n")
    with pytest.raises(DataError, match=r"line 2: image path '../x/../x_0001.jpg' leaves the image root"):
        read_pairs(lfw)


def test_metrics_after_a_kill_have_no_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    assert _train(SMOKE, "--out", str(run), *_sets(TINY + ["schedule.stop_after_steps=3"])) == 0
    with open(run / "metrics.jsonl", "a") as handle:  # what a run killed after its step-3 checkpoint leaves
        handle.write('{"step": 4, "epoch": 0, "loss": 1.0}\n{"step": 5, "ep')
    assert _train("--resume", str(run), *_sets(["schedule.stop_after_steps=0"])) == 0
    assert [line["step"] for line in _strict_lines(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_eval_with_an_unknown_device_is_one_line(tmp_path, caplog):
    code = main(["eval", str(tmp_path / "model.pt"), "--bin", str(tmp_path / "set.bin"), "--device", "tpu"])
    assert code == 2 and _errors(caplog)[-1] == "--device tpu: expected auto, cpu, cuda or cuda:N"


# ------------------------------------------------------------------------------------------ 8. callbacks
def test_callbacks_see_every_micro_batch_and_step_and_match_the_patched_loop(tmp_path, monkeypatch):
    """A callback that changes the images trains exactly as replacing the loop's micro-step did."""
    import arcface.train.loop as loop
    from arcface.train.config import load_config

    config = lambda: load_config(SMOKE, TINY + ["schedule.max_steps=2", "optim.accumulation=2"])  # noqa: E731

    def noisy(generator):
        return lambda images: images + 0.3 * torch.randn(images.shape, generator=generator)

    class Noise(loop.TrainCallback):
        def __init__(self):
            self.change, self.micro, self.steps = noisy(torch.Generator().manual_seed(5)), 0, []

        def on_micro_batch(self, run, images, labels):
            self.micro += 1
            return self.change(images)

        def on_step(self, run, record):
            self.steps.append(record["step"])

    callback = Noise()
    loop.train(config(), tmp_path / "callback", callbacks=[callback])
    assert callback.micro == 4 and callback.steps == [1, 2]

    change, plain = noisy(torch.Generator().manual_seed(5)), loop._Run._micro_step
    monkeypatch.setattr(loop._Run, "_micro_step", lambda self, images, labels, last: plain(self, change(images), labels, last))
    loop.train(config(), tmp_path / "patched")
    a, b = (load_checkpoint(list_checkpoints(tmp_path / name)[0]) for name in ("callback", "patched"))
    for key, value in a["backbone"].items():
        assert torch.equal(value, b["backbone"][key]), key
    monkeypatch.undo()
    loop.train(config(), tmp_path / "plain")
    c = load_checkpoint(list_checkpoints(tmp_path / "plain")[0])
    assert not torch.equal(a["head"]["weight"], c["head"]["weight"])  # the callback did change the training
