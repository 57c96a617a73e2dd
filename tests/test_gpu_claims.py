"""The GPU experiment scripts' own logic, on the CPU: data folder, resuming, the deadline, the tables."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def claims():
    return load("gpu_claims")


# ----------------------------------------------------------------------------- scheduling
def finish_times_by_simulation(remaining: list[float], rate: float, dt: float = 0.01) -> list[float]:
    """Processor sharing, step by step: every unfinished job gets rate / (unfinished jobs) steps a second."""
    left = list(remaining)
    ends = [0.0 if r <= 0 else math.inf for r in left]
    now = 0.0
    while any(math.isinf(e) for e in ends):
        active = [i for i, e in enumerate(ends) if math.isinf(e)]
        for i in active:
            left[i] -= rate / len(active) * dt
        now += dt
        for i in active:
            if left[i] <= 1e-9:
                ends[i] = now
    return ends


def test_keep_within_keeps_the_most_jobs_that_all_end_in_time_under_shared_throughput(claims):
    rng = random.Random(0)
    for _ in range(40):
        remaining = [rng.randint(1, 60) for _ in range(rng.randint(1, 6))]
        rate, tail, margin = rng.uniform(5, 20), rng.uniform(0, 2), rng.choice([1.0, 1.5])
        time_left = rng.uniform(0, 1.2) * (sum(remaining) / rate + tail) * margin
        kept = claims.keep_within(remaining, rate, time_left, tail, margin)
        by_work = sorted(remaining)
        if kept:
            assert max(finish_times_by_simulation(by_work[:kept], rate)) + tail <= time_left / margin + 0.05
        if kept < len(remaining):  # one more would not end in time
            assert max(finish_times_by_simulation(by_work[: kept + 1], rate)) + tail > time_left / margin - 0.05


class _Entry:
    def __init__(self, remaining: int):
        self._remaining = remaining

    def remaining(self) -> int:
        return self._remaining


def test_a_job_starts_only_when_it_and_the_running_work_end_in_time(claims, tmp_path):
    scheduler = claims.Scheduler(parallel=4, deadline=time.monotonic() + 100, margin=1.0, startup_s=10, tail_s=10)
    job = claims.Job("j", ["true"], 700, tmp_path / "m", tmp_path / "r", tmp_path / "l")
    now = time.monotonic()
    assert scheduler.may_start(job, [], now)  # nothing measured: the first jobs start
    scheduler.rate, scheduler.rate_jobs = 10.0, 2  # steps/s of two jobs together
    assert scheduler.may_start(job, [_Entry(0)], now)  # 10 + 70 + 10 <= 100
    assert not scheduler.may_start(job, [_Entry(200)], now)  # 10 + 90 + 10 > 100
    # with more jobs than measured together, their throughput is unknown: it starts
    assert scheduler.may_start(job, [_Entry(200), _Entry(200)], now)
    assert claims.Scheduler(parallel=1, deadline=None).may_start(job, [_Entry(10**9)], now)


def test_a_job_that_cannot_end_before_the_deadline_is_not_started(claims, tmp_path):
    scheduler = claims.Scheduler(parallel=2, deadline=time.monotonic() + 5, poll_s=0.01)
    scheduler.rate, scheduler.rate_jobs = 10.0, 2
    job = claims.Job("long", [sys.executable, "-c", "pass"], 1000, tmp_path / "m.jsonl", tmp_path / "r.json", tmp_path / "long.log")
    outcome = scheduler.run([job])
    assert outcome.not_started == ["long"] and not outcome.done
    assert not job.log.exists()  # never launched


FAKE_TRAINING = """
import json, sys, time
metrics, result, steps, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with open(metrics, "a") as out:
    for step in range(1, steps + 1):
        time.sleep(pause)
        out.write(json.dumps({"step": step, "loss": 1.0}) + "\\n")
        out.flush()
open(result, "w").write("{}")
"""


def fake_job(claims, tmp_path: Path, name: str, steps: int, pause: float):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_TRAINING)
    metrics, result = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
    command = [sys.executable, str(script), str(metrics), str(result), str(steps), str(pause)]
    return claims.Job(name, command, steps, metrics, result, tmp_path / "logs" / f"{name}.log")


def test_the_deadline_stops_what_cannot_finish_and_keeps_what_did(claims, tmp_path):
    short = fake_job(claims, tmp_path, "short", steps=3, pause=0.01)
    long = fake_job(claims, tmp_path, "long", steps=100_000, pause=0.01)
    deadline_s = 6.0
    start = time.monotonic()
    scheduler = claims.Scheduler(parallel=2, deadline=start + deadline_s, poll_s=0.05, min_rate_s=0.5, grace_s=1.0,
                                 startup_s=0.5, tail_s=0.5, first_alone=False)
    outcome = scheduler.run([short, long])
    took = time.monotonic() - start
    assert outcome.done == ["short"] and outcome.stopped == ["long"] and not outcome.failed
    assert short.result.is_file() and not long.result.exists()
    assert took <= deadline_s + 0.5  # ended by the deadline (stopping starts grace_s before it)
    assert 0 < claims.last_step(long.metrics) < 100_000
    assert outcome.aggregate_rate is not None and outcome.aggregate_rate > 0


def test_a_job_whose_progress_cannot_be_measured_is_stopped_at_the_deadline(claims, tmp_path):
    silent = claims.Job("silent", [sys.executable, "-c", "import time; time.sleep(60)"], 10, tmp_path / "s.jsonl",
                        tmp_path / "s.json", tmp_path / "s.log")
    start = time.monotonic()
    outcome = claims.Scheduler(parallel=1, deadline=start + 3.0, poll_s=0.05, grace_s=1.0, startup_s=0.1, tail_s=0.1).run([silent])
    assert outcome.stopped == ["silent"] and time.monotonic() - start <= 3.5


def test_a_failing_job_is_reported_and_the_next_one_runs(claims, tmp_path):
    bad = claims.Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], 1, tmp_path / "b.jsonl", tmp_path / "b.json", tmp_path / "b.log")
    good = fake_job(claims, tmp_path, "good", steps=2, pause=0.0)
    outcome = claims.Scheduler(parallel=1, deadline=None, poll_s=0.02).run([bad, good])
    assert outcome.failed == ["bad"] and outcome.done == ["good"]


def test_last_step_is_the_newest_logged_step_and_a_cut_line_is_ignored(claims, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert claims.last_step(metrics) == 0
    lines = [json.dumps({"step": s, "loss": 2.0}) for s in range(1, 2000)] + [json.dumps({"step": 1999, "eval": {}})]
    metrics.write_text("\n".join(lines) + '\n{"step": 20')
    assert claims.last_step(metrics) == 1999


def test_final_loss_is_the_mean_of_the_last_steps_and_the_later_line_of_a_repeated_step_wins(claims, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": float(s)} for s in (1, 20, 40, 60, 80, 100)]
    records += [{"step": 80, "loss": 8.0}, {"step": 100, "loss": 10.0}, {"step": 100, "eval": {"x": 0.5}}]  # resumed at 60
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, last = claims.final_loss(metrics, steps=100, fraction=0.4)  # steps 61..100
    assert first == 1.0 and last == pytest.approx((8.0 + 10.0) / 2)
    assert claims.final_loss(metrics, steps=100, fraction=0.001)[1] == 10.0


# ----------------------------------------------------------------------------- resuming
def make_plan(claims, tmp_path: Path, **changes):
    values = dict(
        data=tmp_path / "data", results=tmp_path / "results", work=tmp_path / "work", device="cpu", stages=["ablation"],
        methods=["ArcFace", "Softmax"], seeds=[0, 1], steps=10, models=["recipe8000", "adversarial"],
        model_steps={"recipe2469": 5, "recipe8000": 10, "adversarial": 5}, attack=16.0, draws=[0, 1], identities=2,
        inversion_steps=2, inversion_batch=2, starts=1, precision="bf16", parallel=2, workers=0, settings=[],
        eval_pairs=0, angle_images=0, checkpoint_every=5, calibration_batches=1, grids=False,
    )
    values.update(changes)
    return claims.Plan(**values)


def test_finished_ablation_runs_are_skipped_seed_by_seed_and_other_settings_refused(claims, tmp_path):
    plan = make_plan(claims, tmp_path)
    jobs, done = claims.ablation_jobs(plan)
    assert [j.name for j in jobs] == ["ablation_arcface_seed0", "ablation_softmax_seed0", "ablation_arcface_seed1", "ablation_softmax_seed1"]
    assert done == 0
    spec = jobs[1].spec
    assert "head.name=softmax" in spec["overrides"] and "schedule.max_steps=10" in spec["overrides"] and "seed=0" in spec["overrides"]
    claims.write_json(Path(spec["result"]), {"seed": 0, "settings": spec["settings"]})
    jobs, done = claims.ablation_jobs(plan)
    assert done == 1 and "ablation_softmax_seed0" not in [j.name for j in jobs]
    with pytest.raises(claims.SettingsMismatch, match="other settings"):
        claims.ablation_jobs(make_plan(claims, tmp_path, settings=["optim.lr=0.2"]))
    assert claims.ablation_jobs(make_plan(claims, tmp_path, steps=20))[1] == 0  # another budget: its own folder


def test_write_specs_gives_every_job_its_loading_processes(claims, tmp_path):
    jobs, _ = claims.ablation_jobs(make_plan(claims, tmp_path))
    claims.write_specs(jobs, workers=3)
    written = json.loads(Path(jobs[0].command[-1]).read_text())
    assert written["workers"] == 3 and written["run"] == jobs[0].spec["run"]
    assert [claims.data_workers(p, 16) for p in (1, 2, 9, 16)] == [4, 4, 1, 1]


def finish_model(claims, plan, model: str) -> None:
    """What a finished training leaves in the work folder: its result and a checkpoint."""
    run = plan.work / "models" / model
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000010.pt").write_bytes(b"weights")
    claims.write_json(run / "result.json", {"fingerprint": "abc", "settings": claims.model_settings(plan, model), "finished_at": 1.0})


def test_inversion_trains_only_the_models_it_still_needs(claims, tmp_path):
    plan = make_plan(claims, tmp_path, stages=["inversion"])
    units = claims.pending_units(plan)
    assert len(units) == 2 * 2 * 2 and units[0] == ("recipe8000", "closeset", 0)
    for set_name in claims.SETS:
        for draw in plan.draws:  # recipe8000 inverted in an earlier call, adversarial not
            claims.write_json(plan.results / "inversion" / "recipe8000" / f"{set_name}_seed{draw}.json",
                              {"settings": claims.inversion_settings(plan)})
        claims.write_json(plan.results / "models" / "recipe8000" / "f1.json", {"settings": claims.model_settings(plan, "recipe8000")})
    assert {m for m, _, _ in claims.pending_units(plan)} == {"adversarial"}
    jobs, done = claims.model_jobs(plan)
    assert [j.name for j in jobs] == ["model_adversarial"] and done == 1
    assert jobs[0].spec["attack"] == 16.0 and jobs[0].steps == 5
    finish_model(claims, plan, "adversarial")  # trained in this call's work folder
    jobs, done = claims.model_jobs(plan)
    assert jobs == [] and done == 2
    assert (plan.results / "models" / "adversarial" / "abc.json").is_file()  # its result copied where it travels
    assert claims.model_ready(plan, "adversarial") is not None
    assert claims.model_ready(make_plan(claims, tmp_path, attack=8.0), "adversarial") is None  # other settings
    models_only = make_plan(claims, tmp_path, stages=["models"], work=tmp_path / "fresh")
    assert [j.name for j in claims.model_jobs(models_only)[0]] == []  # both have results; no inversion asked


# ----------------------------------------------------------------------------- tables
def test_ablation_table_holds_mean_std_and_per_seed_values(claims, tmp_path):
    folder = tmp_path / "ablation"
    for seed, (accuracy, tar, loss, angle) in enumerate([(0.90, 0.70, 2.0, 40.0), (0.92, None, 4.0, 44.0)]):
        claims.write_json(folder / f"arcface_seed{seed}.json", {"seed": seed, "accuracy": accuracy, "tar_at_far": {"1e-2": tar},
                                                               "final_loss": loss, "target_angle_mean_deg": angle})
    figures, table = claims.summarize_ablation(folder, ["ArcFace", "Softmax"])
    values = dict(line.split("=") for line in figures)
    assert float(values["ablation_arcface_accuracy_mean"]) == pytest.approx(91.0)
    assert float(values["ablation_arcface_accuracy_std"]) == pytest.approx(1.0)
    assert float(values["ablation_arcface_tar_far1e-2_mean"]) == pytest.approx(70.0)
    assert float(values["ablation_arcface_final_loss_mean"]) == pytest.approx(3.0)
    assert float(values["ablation_arcface_target_angle_mean_deg"]) == pytest.approx(42.0)
    rows = table.splitlines()
    assert "90.0, 92.0" in rows[2] and "70.0, n/a" in rows[2] and rows[3].startswith("| Softmax | not run")


def test_inversion_summary_pools_draws_and_counts_paired_gains_and_losses(claims, tmp_path):
    wilson = load("inversion").wilson_interval
    folder = tmp_path / "inversion"
    hits = {("a", 0): [1, 0, 1, 0], ("a", 1): [0, 0, 1, 1], ("b", 0): [1, 1, 0, 0]}  # b misses draw 1
    for (model, draw), row in hits.items():
        claims.write_json(folder / model / f"closeset_seed{draw}.json", {"hits": row, "figures": {"rank1_pct": 100 * sum(row) / len(row)},
                                                                          "model_fingerprint": f"{model}{draw}"})
    figures, table = claims.summarize_inversion(folder, ["a", "b"], [0, 1])
    values = dict(line.split("=") for line in figures)
    assert float(values["inversion_a_closeset_rank1_pct"]) == pytest.approx(50.0) and values["inversion_a_closeset_images"] == "8"
    low, high = wilson(4, 8)
    assert float(values["inversion_a_closeset_rank1_ci95_low_pct"]) == pytest.approx(100 * low, abs=0.01)
    assert float(values["inversion_a_closeset_rank1_ci95_high_pct"]) == pytest.approx(100 * high, abs=0.01)
    # draw 0 only: a = 1010, b = 1100 -> b gains image 1, loses image 2
    assert values["inversion_b_closeset_vs_a_gained"] == "1" and values["inversion_b_closeset_vs_a_lost"] == "1"
    assert "| 1 / 1 (1 draws) | 1 |" in table and "| 50, 50 |  | 2 |" in table  # a: two trainings (fingerprints)


def test_export_puts_the_results_back_where_they_were(claims, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = Path("docs/results/claims")
    claims.write_json(results / "ablation_steps10" / "arcface_seed0.json", {"accuracy": 0.5})
    log = tmp_path / "job.log"
    log.write_bytes(b"x" * 70000 + b"END")
    claims.export(results, [log], tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as archive:
        assert "docs/results/claims/ablation_steps10/arcface_seed0.json" in archive.getnames()
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as archive:
        tail = archive.extractfile("job.log").read()
    assert len(tail) == 65536 and tail.endswith(b"END")


def test_the_command_refuses_a_missing_data_folder_in_one_line(claims, tmp_path, capsys):
    code = claims.main(["--data", str(tmp_path / "nothing"), "--device", "cpu", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "gpu_prepare.py" in error[0]


# ----------------------------------------------------------------------------- the data folder
def fake_lfw(root: Path, people: dict[str, int], same: list[tuple[str, int, int]], different: list[tuple[str, int, str, int]]) -> Path:
    lfw = root / "lfw"
    (lfw / "images").mkdir(parents=True)
    (lfw / "peopleDevTrain.txt").write_text(f"{len(people)}\n" + "".join(f"{n}\t{c}\n" for n, c in people.items()))
    (lfw / "pairsDevTest.txt").write_text(f"{len(same)}\n" + "".join(f"{n}\t{a}\t{b}\n" for n, a, b in same)
                                          + "".join(f"{n}\t{a}\t{m}\t{b}\n" for n, a, m, b in different))
    return lfw


def write_face(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8))


def test_prepare_packs_the_recipes_training_people_with_its_labels_and_the_test_pairs(tmp_path):
    prepare = load("gpu_prepare")
    from arcface.data.face_records import FaceRecordFile

    people = {"Carl": 2, "Anna": 3, "Bob": 1}  # Bob has 1 image: not a training person of the recipe
    same, different = [("Zed", 1, 2)], [("Zed", 1, "Yan", 1)]
    lfw = fake_lfw(tmp_path, people, same, different)
    aligned = tmp_path / "aligned"
    for seed, relative in enumerate(["Anna/Anna_0001.jpg", "Anna/Anna_0002.jpg", "Anna/Anna_0003.jpg", "Carl/Carl_0001.jpg",
                                     "Carl/Carl_0002.jpg", "Bob/Bob_0001.jpg", "Zed/Zed_0001.jpg", "Zed/Zed_0002.jpg", "Yan/Yan_0001.jpg"]):
        write_face(aligned / relative, seed)
    judge = tmp_path / "judge.onnx"
    judge.write_bytes(b"onnx")
    out = tmp_path / "gpu_data"
    manifest = prepare.prepare(lfw, None, judge, out, tmp_path / "work", aligned, workers=1)
    assert (manifest["train_images"], manifest["train_classes"], manifest["eval_images"], manifest["eval_pairs"]) == (5, 2, 3, 2)
    with FaceRecordFile(out / "train" / "lfw_devtrain.rec") as records:
        got = [(records.label_of(k), records.image_bytes(k)) for k in records.image_keys]
    expected = [(0, (aligned / f"Anna/Anna_000{n}.jpg").read_bytes()) for n in (1, 2, 3)]
    expected += [(1, (aligned / f"Carl/Carl_000{n}.jpg").read_bytes()) for n in (1, 2)]
    assert got == expected  # the recipe's labels (sorted names), the bytes unchanged
    assert (out / "eval" / "images" / "Yan" / "Yan_0001.jpg").read_bytes() == (aligned / "Yan/Yan_0001.jpg").read_bytes()
    assert (out / "train" / "classes.tsv").read_text().splitlines()[1:] == ["0\tAnna\t3", "1\tCarl\t2"]
    assert prepare.check(out)["train_images"] == 5
    assert manifest["total_bytes"] >= sum(e["bytes"] for e in manifest["files"].values())
    (out / "judge" / "mobilefacenet.onnx").write_bytes(b"cut")
    with pytest.raises(prepare.DataError, match="rebuild"):
        prepare.check(out)
    os.remove(aligned / "Zed/Zed_0002.jpg")
    with pytest.raises(prepare.DataError, match="pairsDevTest images have no aligned face"):
        prepare.prepare(lfw, None, judge, out, tmp_path / "work", aligned, workers=1)
    os.remove(aligned / "Carl/Carl_0001.jpg")
    os.remove(aligned / "Carl/Carl_0002.jpg")
    write_face(aligned / "Zed/Zed_0002.jpg", 99)
    with pytest.raises(prepare.DataError, match="no aligned image"):
        prepare.prepare(lfw, None, judge, out, tmp_path / "work", aligned, workers=1)
