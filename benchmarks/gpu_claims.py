"""The paper's claims at a real budget on one GPU, in short resumable calls: the loss ablation and inversion.

Stages (``--stages``, run in this order):

* ``ablation``: the nine losses of ``benchmarks/ablation.py`` (paper settings, s = 64) x ``--seeds`` on the
  LFW recipe (``configs/lfw_cpu.yaml``) cut to ``--steps`` (2,469: the step count of the compiled 60-minute
  CPU run), ``--parallel`` trainings at once on the one GPU. One JSON per finished run in
  ``<results>/ablation_steps<N>/<method>_seed<k>.json``: pairsDevTest accuracy and TAR@FAR, the final
  training loss (mean of the logged losses of the last 5% of the steps) and the mean target angle (between
  each training face's embedding and its class center, all 6,671 faces, degrees); ``table.md`` beside them.
* ``models``: the models to invert (``--models``): ``recipe8000`` (the recipe, 8,000 steps), ``adversarial``
  (the recipe trained from scratch on adversarial faces: every image first moved up the margin loss within
  an L2 ball of radius drawn in [0, ``--attack``], one step, as ``benchmarks/robust_finetune.py``; then the
  BatchNorm statistics re-estimated on clean images), ``recipe2469`` (the plain recipe, a baseline). Same
  figures, in ``<results>/models/<model>/<fingerprint>.json`` (fingerprint: of the checkpoint inverted).
* ``inversion``: per model, ``--draws`` (seeds: 0 1 2) of 50 training classes (close-set) and 50 unseen
  people (open-set), the same targets for every model (``benchmarks/inversion.py``'s draw), judged by the
  independent MobileFaceNet: rank-1 with its 95% Wilson interval, one JSON per (model, set, draw) in
  ``<results>/inversion/<model>/``; ``summary.md``: pooled over the draws, with paired gains/losses against
  the first model. A model is trained first when this call has no finished training of it (a fresh machine).

Resuming: finished work is a file in ``--results`` and is skipped (a result made with other settings is
refused: use another ``--results``); an unfinished training resumes from its newest checkpoint in ``--work``
when that folder survived, else starts again. ``--deadline-s``: seconds after the start by which the call
has stopped everything and written what it finished. Before that, a training is started only when the
throughput measured so far says it ends in time (``--margin`` of slack), and when the running trainings
together cannot all end in time, the least advanced are stopped so that the others do. ``--export DIR``
writes ``results.tar.gz`` (the results folder) and ``logs.tar.gz`` (this call's job logs) there.

Printed, one per line: ``<stage>_done``, ``_stopped``, ``_left`` counts, the tables' figures
(``ablation_<method>_accuracy_mean`` ..., ``model_<name>_accuracy``, ``inversion_<model>_<set>_rank1_pct``
...), ``remaining=<count of units not done>``. Data: ``gpu_data/`` from ``benchmarks/gpu_prepare.py``.

    PYTHONPATH=src python3 benchmarks/gpu_claims.py --stages ablation --seeds 0 --deadline-s 540 \\
        --results docs/results/gpu_claims --export "$OUT"

``--dry-run-on-cpu``: the same code at a tiny size on the CPU (2 methods x 1 seed, a few steps, 2
classes, one draw, 20 pairs), results under ``runs/gpu_claims_dry``, to catch mistakes before GPU time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("benchmarks.gpu_claims")

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
RECIPE = REPO / "configs" / "lfw_cpu.yaml"
STAGES = ("ablation", "models", "inversion")
SETS = ("closeset", "openset")
# The models inverted: training steps, and whether every training image is first attacked (--attack).
# The adversarial model trains the recipe's own step count: each of its steps also computes the attack
# (a forward and backward more: about twice the cost of a plain step).
MODELS: dict[str, dict] = {
    "recipe2469": {"steps": 2469, "adversarial": False},
    "recipe8000": {"steps": 8000, "adversarial": False},
    "adversarial": {"steps": 2469, "adversarial": True},
}
DEFAULT_MODELS = ["recipe8000", "adversarial"]
FINAL_LOSS_FRACTION = 0.05  # final loss: mean of the logged losses of the last 5% of the steps


# ============================================================================ scheduling
@dataclass
class Job:
    """One training process: its command and where its progress shows."""

    name: str
    command: list[str]
    steps: int  # the step count the training ends at
    metrics: Path  # the run's metrics.jsonl; its last logged "step" is the progress
    result: Path  # written last by the job: the job finished when it exists
    log: Path
    spec: dict = field(default_factory=dict)  # what the worker does (written to command[-1] before the launch)


def last_step(metrics: Path) -> int:
    """The last step a run logged to its metrics.jsonl (0 when none yet)."""
    try:
        with open(metrics, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 8192))
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written, or cut by the seek
        if "step" in record:
            return int(record["step"])
    return 0


def keep_within(remaining: list[float], rate: float, time_left: float, tail_s: float, margin: float) -> int:
    """How many of the running trainings can end in time; they are the ones with least work left.

    Model: the trainings share one aggregate throughput ``rate`` (steps/s, as measured with all of them
    running; it stays when some are stopped: the GPU and the data loading stay busy), so the trainings
    with the ``k`` smallest ``remaining`` step counts all end after ``sum(those) / rate`` seconds, plus
    ``tail_s`` (evaluation). ``margin`` > 1 is slack on the time: they must end by ``time_left / margin``.
    """
    budget = (time_left / margin - tail_s) * rate
    total, kept = 0.0, 0
    for steps in sorted(remaining):
        total += steps
        if total > budget:
            break
        kept += 1
    return kept


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    log_file: object
    launched: float
    first_step_at: float | None = None  # when this call first saw a logged step
    history: list[tuple[float, int]] = field(default_factory=list)  # (time seen, step) at each new step
    ended_training: float | None = None  # when the last step was first seen

    def observe(self, now: float) -> None:
        step = last_step(self.job.metrics)
        if step <= 0:
            return
        if self.first_step_at is None:
            self.first_step_at = now
        if not self.history or step != self.history[-1][1]:
            self.history.append((now, step))
        if step >= self.job.steps and self.ended_training is None:
            self.ended_training = now

    def rate(self, min_seconds: float, window_s: float) -> float | None:
        """Steps per second over the last ``window_s`` seconds of progress (all of it when shorter);
        None until ``min_seconds`` of progress are seen (a rate changes when other jobs start or stop)."""
        if len(self.history) < 2:
            return None
        last_time, last_step_seen = self.history[-1]
        older = [i for i, (t, _) in enumerate(self.history) if t <= last_time - window_s]
        if older:
            del self.history[: older[-1]]  # what is older than the window's start is not needed again
        first_time, first_step = self.history[0]
        if last_time - first_time < min_seconds:
            return None
        return (last_step_seen - first_step) / (last_time - first_time)

    def remaining(self) -> int:
        return max(0, self.job.steps - (self.history[-1][1] if self.history else 0))


@dataclass
class Outcome:
    """What a scheduler call did, by job name."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # started, then stopped to keep the deadline
    not_started: list[str] = field(default_factory=list)
    aggregate_rate: float | None = None  # steps/s of all trainings together, last measured


class Scheduler:
    """Runs jobs ``parallel`` at a time and keeps a deadline (see the module docstring).

    Args:
        deadline: ``time.monotonic()`` by which every job has ended (None: no deadline).
        startup_s, tail_s: guesses of launch-to-first-step and last-step-to-exit seconds, replaced by the
            longest measured once jobs show them.
        margin: slack factor on every time estimate (> 1).
        min_rate_s: seconds of progress before a job's rate counts; rate_window_s: the rate is that of the
            last this many seconds.
        grace_s: seconds a stopped job gets to exit before it is killed; the stop starts that long before the deadline.
        first_alone: start one job, and the others once it has made its first step: with ``model.compile``
            the first compiles the network and the others find it in the compiler's cache, instead of all
            compiling at once on the same cores.
    """

    def __init__(self, parallel: int, deadline: float | None, margin: float = 1.15, startup_s: float = 60.0,
                 tail_s: float = 30.0, poll_s: float = 0.5, min_rate_s: float = 5.0, rate_window_s: float = 30.0,
                 grace_s: float = 10.0, first_alone: bool = True):
        self.parallel, self.deadline, self.margin, self.first_alone = parallel, deadline, margin, first_alone
        self.startup_s, self.tail_s = startup_s, tail_s
        self.poll_s, self.min_rate_s, self.rate_window_s, self.grace_s = poll_s, min_rate_s, rate_window_s, grace_s
        self.rate: float | None = None  # aggregate steps/s, last measured with every training job rated
        self.rate_jobs = 0  # how many jobs were training together in that measurement
        self.measured_startup = self.measured_tail = False

    def _time_left(self, now: float) -> float:
        return math.inf if self.deadline is None else self.deadline - now

    def _launch(self, job: Job, now: float) -> _Running:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(job.log, "a")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
        # A session of its own: stopping the job stops its data-loading processes with it.
        process = subprocess.Popen(job.command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.info("%s: started", job.name)
        return _Running(job, process, log_file, now)

    def _stop(self, running: list[_Running], why: str) -> None:
        for entry in running:
            log.warning("%s: stopped at step %d of %d (%s)", entry.job.name, entry.job.steps - entry.remaining(), entry.job.steps, why)
            try:
                os.killpg(entry.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + self.grace_s
        for entry in running:
            try:
                entry.process.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(entry.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                entry.process.wait()
            entry.log_file.close()

    def may_start(self, job: Job, running: list[_Running], now: float) -> bool:
        """Whether ``job`` started now ends in time, with the running jobs, at the measured throughput."""
        time_left = self._time_left(now)
        if time_left == math.inf:
            return True
        if self.rate is None or self.rate_jobs < len(running) + 1:
            # The throughput of that many jobs together is not known (it grows with them until the GPU or
            # the cores are full): the job starts, and the running jobs are judged once measured.
            return time_left > self.margin * (self.startup_s + self.tail_s)
        work = sum(entry.remaining() for entry in running) + job.steps
        return self.margin * (self.startup_s + work / self.rate + self.tail_s) <= time_left

    def run(self, jobs: list[Job]) -> Outcome:
        outcome = Outcome()
        pending = list(jobs)
        running: list[_Running] = []
        try:
            while pending or running:
                now = time.monotonic()
                for entry in running:
                    entry.observe(now)
                for entry in [e for e in running if e.process.poll() is not None]:
                    running.remove(entry)
                    entry.log_file.close()
                    if entry.process.returncode == 0 and entry.job.result.is_file():
                        outcome.done.append(entry.job.name)
                        if entry.ended_training is not None:
                            self.tail_s = max(self.tail_s if self.measured_tail else 0.0, now - entry.ended_training)
                            self.measured_tail = True
                        log.info("%s: done", entry.job.name)
                    else:
                        outcome.failed.append(entry.job.name)
                        log.error("%s: failed (exit %s); see %s", entry.job.name, entry.process.returncode, entry.job.log)
                for entry in running:
                    took = None if entry.first_step_at is None else entry.first_step_at - entry.launched
                    if took is not None and took > (self.startup_s if self.measured_startup else 0.0):
                        self.startup_s, self.measured_startup = took, True
                training = [entry for entry in running if entry.remaining() > 0]  # not those evaluating
                rates = [entry.rate(self.min_rate_s, self.rate_window_s) for entry in training]
                if training and all(r is not None for r in rates):
                    self.rate, self.rate_jobs = sum(rates), len(training)
                    keep = keep_within([e.remaining() for e in training], self.rate, self._time_left(now), self.tail_s, self.margin)
                    if keep < len(training):
                        stop = sorted(training, key=lambda e: e.remaining())[keep:]
                        self._stop(stop, f"it cannot end before the deadline at {self.rate:.1f} steps/s in all")
                        for entry in stop:
                            running.remove(entry)
                            outcome.stopped.append(entry.job.name)
                if self._time_left(now) <= self.grace_s and running:  # stopping takes up to grace_s
                    self._stop(running, "deadline")
                    outcome.stopped += [entry.job.name for entry in running]
                    running = []
                while pending and len(running) < self.parallel:
                    if self.first_alone and running and not self.measured_startup:
                        break  # the first job fills the compile cache before the others start
                    if not self.may_start(pending[0], running, now):
                        break
                    running.append(self._launch(pending.pop(0), now))
                if pending and not running:
                    break  # nothing can start in the time left
                time.sleep(self.poll_s)
        finally:
            if running:  # an exception (Ctrl-C): leave no training behind
                self._stop(running, "interrupted")
                outcome.stopped += [entry.job.name for entry in running]
        outcome.not_started = [job.name for job in pending]
        outcome.aggregate_rate = self.rate
        return outcome


# ============================================================================ results
class SettingsMismatch(Exception):
    """A result on disk was made with other settings than this call's."""


def write_json(path: Path, entry: dict) -> None:
    """Write atomically: a file that exists is complete (finished work is recognized by its file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(entry, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def is_done(result: Path, settings: dict) -> bool:
    """Whether ``result`` exists; SettingsMismatch when it was made with other ``settings``."""
    if not result.is_file():
        return False
    made_with = json.loads(result.read_text()).get("settings")
    if made_with != settings:
        raise SettingsMismatch(f"{result} was made with other settings ({made_with} vs {settings}); use another --results")
    return True


def final_loss(metrics: Path, steps: int, fraction: float = FINAL_LOSS_FRACTION) -> tuple[float, float]:
    """(first logged loss, mean logged loss over the last ``fraction`` of the steps).

    A resumed run logs the steps after its checkpoint twice; the later line of a step wins."""
    losses: dict[int, float] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[int(record["step"])] = float(record["loss"])
    if not losses:
        raise ValueError(f"{metrics}: no logged loss")
    start = steps - max(1, math.ceil(fraction * steps))
    last = [loss for step, loss in losses.items() if step > start] or [losses[max(losses)]]
    return losses[min(losses)], statistics.fmean(last)


def summarize_ablation(folder: Path, methods: list[str]) -> tuple[list[str], str]:
    """Figure lines and a markdown table: mean ± population std over seeds, per-seed values."""
    from ablation import accuracy_and_tar, seed_entries, slug

    lines = ["| Method | Accuracy (%) | TAR@FAR=1e-2 (%) | Final loss | Target angle (°) | Runs | Accuracy per seed | TAR per seed |",
             "|---|---|---|---|---|---|---|---|"]
    figures = []

    def cell(values: list[float], digits: int = 2) -> str:
        return f"{statistics.fmean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}" if values else "n/a"

    for method in methods:
        entries = seed_entries(folder, method)
        if not entries:
            lines.append(f"| {method} | not run | | | | 0 | | |")
            continue
        accuracy, tar = accuracy_and_tar(entries)
        loss = [e["final_loss"] for e in entries]
        angle = [e["target_angle_mean_deg"] for e in entries]
        key = f"ablation_{slug(method)}"
        figures += [f"{key}_accuracy_mean={statistics.fmean(accuracy):.2f}", f"{key}_accuracy_std={statistics.pstdev(accuracy):.2f}"]
        if tar:
            figures += [f"{key}_tar_far1e-2_mean={statistics.fmean(tar):.2f}", f"{key}_tar_far1e-2_std={statistics.pstdev(tar):.2f}"]
        figures += [f"{key}_final_loss_mean={statistics.fmean(loss):.3f}", f"{key}_target_angle_mean_deg={statistics.fmean(angle):.2f}",
                    f"{key}_runs={len(entries)}"]
        per_seed = ", ".join(f"{a:.1f}" for a in accuracy)
        tar_seed = ", ".join("n/a" if e["tar_at_far"].get("1e-2") is None else f"{100 * e['tar_at_far']['1e-2']:.1f}" for e in entries)
        lines.append(f"| {method} | {cell(accuracy)} | {cell(tar)} | {cell(loss, 3)} | {cell(angle, 1)} | {len(entries)} | {per_seed} | {tar_seed} |")
    return figures, "\n".join(lines) + "\n"


def summarize_models(folder: Path, models: list[str]) -> tuple[list[str], str]:
    """One row per training of each model (a model trained again on another machine has several)."""
    lines = ["| Model | Steps | pairsDevTest (%) | TAR@FAR=1e-2 (%) | Final loss | Target angle (°) | Training (s) | Fingerprint |",
             "|---|---|---|---|---|---|---|---|"]
    figures = []
    for model in models:
        entries = sorted((json.loads(p.read_text()) for p in (folder / model).glob("*.json")), key=lambda e: e["finished_at"])
        for index, e in enumerate(entries):
            tar = e["tar_at_far"].get("1e-2")
            lines.append(f"| {model} | {e['steps']} | {100 * e['accuracy']:.1f} | {'n/a' if tar is None else f'{100 * tar:.1f}'} | "
                         f"{e['final_loss']:.3f} | {e['target_angle_mean_deg']:.1f} | {e['training_seconds']:.0f} | {e['fingerprint']} |")
            suffix = "" if index == 0 else f"_{index + 1}"
            figures += [f"model_{model}{suffix}_accuracy={100 * e['accuracy']:.2f}", f"model_{model}{suffix}_target_angle_deg={e['target_angle_mean_deg']:.2f}"]
    return figures, "\n".join(lines) + "\n"


def wilson(hits: int, total: int) -> tuple[float, float]:
    from inversion import wilson_interval

    return wilson_interval(hits, total)


def summarize_inversion(folder: Path, models: list[str], draws: list[int]) -> tuple[list[str], str]:
    """Pooled rank-1 over the draws per (model, set), 95% interval, and paired gains/losses against the
    first model on the draws both have (the same targets and starting noise)."""
    lines = ["| Model | Set | Draws | Rank-1 (%) pooled [95% interval] | Per draw (%) | Gained / lost vs the first model | Trainings |",
             "|---|---|---|---|---|---|---|"]
    figures = []
    for set_name in SETS:
        reference: dict[int, list[int]] = {}
        for position, model in enumerate(models):
            found = {d: json.loads(p.read_text()) for d in draws if (p := folder / model / f"{set_name}_seed{d}.json").is_file()}
            if not found:
                continue
            hits = [h for d in sorted(found) for h in found[d]["hits"]]
            low, high = wilson(sum(hits), len(hits))
            rank1 = 100 * sum(hits) / len(hits)
            key = f"inversion_{model}_{set_name}"
            figures += [f"{key}_rank1_pct={rank1:.2f}", f"{key}_rank1_ci95_low_pct={100 * low:.2f}",
                        f"{key}_rank1_ci95_high_pct={100 * high:.2f}", f"{key}_images={len(hits)}"]
            paired = ""
            if position == 0:
                reference = {d: found[d]["hits"] for d in found}
            else:
                common = sorted(set(reference) & set(found))
                gained = sum(1 for d in common for a, b in zip(reference[d], found[d]["hits"]) if b and not a)
                lost = sum(1 for d in common for a, b in zip(reference[d], found[d]["hits"]) if a and not b)
                if common:
                    figures += [f"{key}_vs_{models[0]}_gained={gained}", f"{key}_vs_{models[0]}_lost={lost}"]
                    paired = f"{gained} / {lost} ({len(common)} draws)"
            per_draw = ", ".join(f"{found[d]['figures']['rank1_pct']:.0f}" for d in sorted(found))
            # draws inverted on different machines used different trainings of the same recipe
            trainings = len({entry.get("model_fingerprint") for entry in found.values()})
            lines.append(f"| {model} | {set_name} | {len(found)} | {rank1:.1f} [{100 * low:.1f}, {100 * high:.1f}] | {per_draw} | {paired} | {trainings} |")
    return figures, "\n".join(lines) + "\n"


# ============================================================================ the worker (one training)
def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def eval_pairs_file(pairs: Path, count: int, work: Path) -> Path:
    """pairsDevTest itself, or (``count`` > 0) its first ``count``/2 same and different pairs in a TSV (dry runs)."""
    if count <= 0:
        return pairs
    from arcface.data.protocols import read_pairs, write_pairs

    table = read_pairs(pairs)
    subset = [p for p in table if p.same][: count // 2] + [p for p in table if not p.same][: count // 2]
    path = work / f"pairs_{count}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pairs(path, subset)
    return path


def target_angles(run: Path, rec: Path, device: str, count: int) -> list[float]:
    """Degrees between each training face's embedding (no flip) and its class center (the head's row).

    ``count`` > 0: that many faces, evenly spaced over the classes' sorted order (dry runs)."""
    import numpy as np
    import torch

    from arcface.data.datasets import FaceTransform, RecordDataset
    from arcface.eval import embed_images
    from arcface.invert import load_for_inversion

    dataset = RecordDataset(rec, transform=FaceTransform(flip=0.0))
    indices = list(range(len(dataset))) if count <= 0 else np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()
    subset = torch.utils.data.Subset(dataset, indices)
    labels = np.array([dataset.labels[i] for i in indices])
    backbone, head, _ = load_for_inversion(run, need_head=True)
    embedded = embed_images(backbone.to(device), subset, flip_test=False, device=device, batch_size=256)
    centers = torch.nn.functional.normalize(head.weight.detach().float(), dim=1).numpy()
    cos = np.einsum("nd,nd->n", embedded, centers[labels])
    return np.degrees(np.arccos(np.clip(cos, -1, 1))).tolist()


def worker(spec_path: Path) -> int:
    """Train (or resume) one run, measure it, write its result file last."""
    import torch

    from arcface.data.protocols import read_pairs
    from arcface.eval.evaluate import EvalOptions, evaluate_pairs
    from arcface.model import load_face_model
    from arcface.train.checkpoint import list_checkpoints
    from arcface.train.config import load_config
    from arcface.train.loop import train

    spec = json.loads(spec_path.read_text())
    run, device = Path(spec["run"]), spec["device"]
    loading = [f"data.num_workers={spec['workers']}"]  # does not change the samples (the sampler draws them)
    config = load_config(RECIPE, [*spec["overrides"], *loading])
    marker = run / "settings.json"  # what the run's checkpoints were trained for
    if list_checkpoints(run) and marker.is_file() and json.loads(marker.read_text()) == spec["settings"]:
        log.info("resuming %s", run)
        start = lambda callbacks: train(None, run, resume=True, fallback=True, overrides=loading, callbacks=callbacks)  # noqa: E731
    else:
        shutil.rmtree(run, ignore_errors=True)
        write_json(marker, spec["settings"])
        start = lambda callbacks: train(config, run, callbacks=callbacks)  # noqa: E731
    if spec["attack"]:
        from robust_finetune import perturbation, perturbing_callback, recalibrate_newest_checkpoint

        # robust_finetune's default seed; a resumed run draws other radii after its checkpoint (not bit-exact)
        change = perturbation("adversarial", spec["attack"], torch.Generator().manual_seed(123))
        summary = start([perturbing_callback(change)])
        recalibrate_newest_checkpoint(run, config, spec["calibration_batches"], device)
    else:
        summary = start([])
    checkpoint = list_checkpoints(run)[0]
    model, info = load_face_model(str(checkpoint))
    options = EvalOptions(align="none", device=device, workers=min(2, spec["workers"]), progress=False)
    report, _ = evaluate_pairs(model.to(device), info, spec["pairs"], spec["images"], options)
    angles = target_angles(checkpoint, Path(spec["rec"]), device, spec["angle_images"])
    first, last = final_loss(run / "metrics.jsonl", int(summary["steps"]))
    entry = {
        **spec["meta"], "settings": spec["settings"], "accuracy": report["accuracy"], "accuracy_std_folds": report["accuracy_std"],
        "tar_at_far": report["tar_at_far"], "eer": report["eer"], "eval_pairs": len(read_pairs(spec["pairs"])),
        "first_loss": first, "final_loss": last, "target_angle_mean_deg": statistics.fmean(angles),
        "target_angle_median_deg": statistics.median(angles), "target_angle_images": len(angles),
        "steps": summary["steps"], "training_seconds": summary["training_seconds"], "nonfinite_skipped": summary["nonfinite_skipped"],
        "fingerprint": _fingerprint(checkpoint), "device": _device_name(device), "finished_at": time.time(),
    }
    write_json(Path(spec["result"].replace("{fingerprint}", entry["fingerprint"])), entry)
    write_json(run / "result.json", entry)  # last: the scheduler counts the job done when this exists
    return 0


# ============================================================================ the stages
@dataclass
class Plan:
    """Everything a call runs and at what size (the full GPU plan, or the tiny CPU dry run)."""

    data: Path
    results: Path
    work: Path
    device: str
    stages: list[str]
    methods: list[str]
    seeds: list[int]
    steps: int
    models: list[str]
    model_steps: dict[str, int]
    attack: float
    draws: list[int]
    identities: int
    inversion_steps: int
    inversion_batch: int
    starts: int
    precision: str
    parallel: int
    workers: int | None  # data-loading processes per training; None: from the CPU count
    settings: list[str]  # key=value for every training
    eval_pairs: int  # 0: all of pairsDevTest
    angle_images: int  # 0: all training faces
    checkpoint_every: int
    calibration_batches: int
    grids: bool


def _job(plan: Plan, name: str, run: Path, result: Path, overrides: list[str], meta: dict, settings: dict, attack: float | None) -> Job:
    spec = {
        "run": str(run), "result": str(result), "device": plan.device, "overrides": overrides, "attack": attack,
        "calibration_batches": plan.calibration_batches, "pairs": str(eval_pairs_file(plan.data / "eval" / "pairsDevTest.txt", plan.eval_pairs, plan.work)),
        "images": str(plan.data / "eval" / "images"), "rec": str(plan.data / "train" / "lfw_devtrain.rec"),
        "angle_images": plan.angle_images, "meta": meta, "settings": settings, "workers": 1,
    }
    spec_path = plan.work / "specs" / f"{name}.json"
    return Job(name, [sys.executable, str(HERE), "--worker", str(spec_path)], int(settings["steps"]), run / "metrics.jsonl",
               run / "result.json", plan.work / "logs" / f"{name}.log", spec)


def data_workers(parallel: int, cpus: int) -> int:
    """Data-loading processes per training when ``parallel`` train at once: the cores left over, 1 to 4."""
    return max(1, min(4, cpus // parallel - 1))


def write_specs(jobs: list[Job], workers: int) -> None:
    for job in jobs:
        write_json(Path(job.command[-1]), {**job.spec, "workers": workers})


def _training_overrides(plan: Plan, steps: int, seed: int) -> list[str]:
    rec = plan.data / "train" / "lfw_devtrain.rec"
    return [
        f"data.source={rec}", "eval.pairs=null", "eval.images=null", "eval.every_steps=0",
        "schedule.time_budget_minutes=0", f"schedule.max_steps={steps}", "checkpoint.every_minutes=0",
        f"checkpoint.every_steps={plan.checkpoint_every}", "checkpoint.keep_last=1", f"seed={seed}", f"device={plan.device}",
    ]


def ablation_jobs(plan: Plan) -> tuple[list[Job], int]:
    """The unfinished (method, seed) runs, seed by seed (a call that ends early leaves whole seeds), and the done count."""
    from ablation import METHODS, slug

    folder = plan.results / f"ablation_steps{plan.steps}"
    jobs, done = [], 0
    for seed in plan.seeds:
        for method in plan.methods:
            name = f"{slug(method)}_seed{seed}"
            settings = {"steps": plan.steps, "head": METHODS[method], "set": plan.settings, "eval_pairs": plan.eval_pairs}
            result = folder / f"{name}.json"
            if is_done(result, settings):
                done += 1
                continue
            overrides = [*_training_overrides(plan, plan.steps, seed), *METHODS[method], *plan.settings]
            run = plan.work / f"ablation_steps{plan.steps}" / name
            jobs.append(_job(plan, f"ablation_{name}", run, result, overrides, {"method": method, "seed": seed}, settings, None))
    return jobs, done


def model_settings(plan: Plan, model: str) -> dict:
    attack = plan.attack if MODELS[model]["adversarial"] else None
    return {"steps": plan.model_steps[model], "attack": attack, "set": plan.settings, "eval_pairs": plan.eval_pairs}


def model_ready(plan: Plan, model: str) -> Path | None:
    """The checkpoint of a finished training of ``model`` in this call's work folder, if any."""
    from arcface.train.checkpoint import list_checkpoints

    run = plan.work / "models" / model
    result = run / "result.json"
    if not result.is_file() or json.loads(result.read_text()).get("settings") != model_settings(plan, model):
        return None
    found = list_checkpoints(run)
    return found[0] if found else None


def inversion_settings(plan: Plan) -> dict:
    return {"identities": plan.identities, "steps": plan.inversion_steps, "batch": plan.inversion_batch, "starts": plan.starts,
            "precision": plan.precision, "variant": "defaults (lambda0.05)"}


def pending_units(plan: Plan) -> list[tuple[str, str, int]]:
    """(model, set, draw) inversions without a result, model by model, draw by draw."""
    settings = inversion_settings(plan)
    units = []
    for model in plan.models:
        for draw in plan.draws:
            for set_name in SETS:
                if not is_done(plan.results / "inversion" / model / f"{set_name}_seed{draw}.json", settings):
                    units.append((model, set_name, draw))
    return units


def model_jobs(plan: Plan) -> tuple[list[Job], int]:
    """Trainings of the models that have no result (stage models) or are needed by an inversion left (stage inversion)."""
    needed_for_inversion = {model for model, _, _ in pending_units(plan)} if "inversion" in plan.stages else set()
    jobs, done = [], 0
    for model in plan.models:
        folder = plan.results / "models" / model
        has_result = any(json.loads(p.read_text()).get("settings") == model_settings(plan, model) for p in folder.glob("*.json"))
        if model_ready(plan, model) is not None:
            entry = json.loads((plan.work / "models" / model / "result.json").read_text())
            if not (folder / f"{entry['fingerprint']}.json").is_file():  # its result was not brought back last time
                write_json(folder / f"{entry['fingerprint']}.json", entry)
            done += 1
            continue
        if has_result and model not in needed_for_inversion:
            done += 1
            continue
        if not ("models" in plan.stages or model in needed_for_inversion):
            continue
        settings = model_settings(plan, model)
        steps = settings["steps"]
        overrides = [*_training_overrides(plan, steps, 0), *plan.settings]
        run = plan.work / "models" / model
        (run / "result.json").unlink(missing_ok=True)  # made with other settings
        jobs.append(_job(plan, f"model_{model}", run, folder / "{fingerprint}.json", overrides, {"model": model, "attack": settings["attack"]},
                         settings, settings["attack"]))
    return jobs, done


class Inverter:
    """The inversion stage in this process: judge, draws and per-model networks loaded once."""

    def __init__(self, plan: Plan):
        import torch

        from arcface.data.datasets import FaceTransform, RecordDataset
        from arcface.model import SpecAdapter, load_face_model
        from inversion import unseen_people

        self.plan = plan
        judge, judge_info = load_face_model(str(plan.data / "judge" / "mobilefacenet.onnx"), input_mean=127.5, input_std=128.0)
        self.judge = SpecAdapter(judge, judge_info.spec)  # it judges faces made in our models' convention
        self.dataset = RecordDataset(plan.data / "train" / "lfw_devtrain.rec", transform=FaceTransform(flip=0.0))
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(self.dataset.labels):
            self.by_class.setdefault(label, []).append(index)
        self.people = unseen_people(plan.data / "eval" / "pairsDevTest.txt", (plan.data / "eval" / "images").resolve())
        self.torch = torch

    def targets(self, draw: int) -> tuple[list[int], list[tuple[str, str]]]:
        from inversion import draw_targets

        eligible = sorted(self.by_class)  # every class has a photo (benchmarks/inversion.py --min-photos 1)
        classes, chosen = draw_targets(draw, eligible, len(self.people), self.plan.identities)
        return classes, [self.people[i] for i in chosen]

    def _templates(self, groups: list[list]) -> "torch.Tensor":
        """The judge's normalized mean embedding of each group of (3, 112, 112) images."""
        from arcface.eval import embed_images

        torch = self.torch
        images = torch.stack([image for group in groups for image in group])
        embedded = torch.from_numpy(embed_images(self.judge, images, batch_size=64))
        rows, start = [], 0
        for group in groups:
            rows.append(torch.nn.functional.normalize(embedded[start : start + len(group)].mean(0), dim=0))
            start += len(group)
        return torch.stack(rows)

    def run(self, model: str, checkpoint: Path, set_name: str, draw: int) -> dict:
        from arcface.eval import embed_images
        from arcface.eval.images import FaceImages
        from arcface.invert import InversionConfig, invert_classes, invert_embeddings, load_for_inversion, save_grid
        from inversion import batched, judge_images

        torch, plan = self.torch, self.plan
        start = time.perf_counter()
        backbone, head, _ = load_for_inversion(checkpoint, need_head=True)
        backbone = backbone.to(plan.device)
        classes, people = self.targets(draw)
        config = InversionConfig(steps=plan.inversion_steps, seed=draw, precision=plan.precision, device=plan.device)
        out = plan.results / "inversion" / model
        out.mkdir(parents=True, exist_ok=True)
        if set_name == "closeset":
            gallery = self._templates([[self.dataset[i][0] for i in self.by_class[c]] for c in classes])
            images = batched(lambda chunk: invert_classes(backbone, head, chunk, config, plan.starts)[0], classes, plan.inversion_batch, plan.starts)
            targets = {"classes": classes}
        else:
            gallery = self._templates([[FaceImages([judge_photo], "/", align="none")[0][0]] for _, judge_photo in people])
            embedded = torch.from_numpy(embed_images(backbone, FaceImages([p for p, _ in people], "/", align="none"), device=plan.device))
            images = batched(lambda chunk: invert_embeddings(backbone, chunk, config, plan.starts)[0], embedded, plan.inversion_batch, plan.starts)
            targets = {"people": [Path(p).parent.name for p, _ in people]}
        figures, hits = judge_images(self.judge, images, gallery, out / f"{set_name}_seed{draw}.tsv")
        if plan.grids:
            shown = images[:8] if set_name == "closeset" else torch.cat(
                [torch.stack([FaceImages([p], "/", align="none")[0][0] for p, _ in people[:8]])[:, None], images[:8]], dim=1)
            save_grid(shown, out / f"{set_name}_seed{draw}.png")
        entry = {"model": model, "set": set_name, "draw": draw, "settings": inversion_settings(plan), "figures": figures,
                 "hits": [int(h) for h in hits.tolist()], **targets, "model_fingerprint": _fingerprint(checkpoint),
                 "seconds": time.perf_counter() - start, "device": _device_name(plan.device), "finished_at": time.time()}
        write_json(out / f"{set_name}_seed{draw}.json", entry)
        return entry


def run_inversions(plan: Plan, deadline: float | None, margin: float, first_estimate_s: float) -> tuple[int, int]:
    """Every pending (model, set, draw) whose model is trained here, while the time left allows one more.

    Returns (done, left)."""
    units = pending_units(plan)
    ready = {model: model_ready(plan, model) for model in {m for m, _, _ in units}}
    inverter, done, longest = None, 0, first_estimate_s
    for position, (model, set_name, draw) in enumerate(units):
        if ready[model] is None:
            log.warning("inversion %s %s draw %d: no finished training of %s here (stage inversion trains it first)", model, set_name, draw, model)
            continue
        if deadline is not None and time.monotonic() + margin * longest > deadline:
            log.warning("inversion: %d units left for the next call (about %.0f s each)", len(units) - position, longest)
            return done, len(units) - done
        start = time.monotonic()
        inverter = inverter or Inverter(plan)
        entry = inverter.run(model, ready[model], set_name, draw)
        took = time.monotonic() - start
        longest = took if done == 0 else max(longest, took)
        done += 1
        log.info("inversion %s %s draw %d: rank-1 %.1f%% (%.0f s)", model, set_name, draw, entry["figures"]["rank1_pct"], took)
    return done, len(units) - done


# ============================================================================ the command
def export(results: Path, logs: list[Path], destination: Path) -> None:
    """``results.tar.gz`` (the results folder at its path from the current folder, so that ``tar xzf`` there
    puts it back) and ``logs.tar.gz`` (the last 64 kB of each log)."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        name = str(results.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:  # outside the current folder
        name = results.name
    with tarfile.open(destination / "results.tar.gz", "w:gz") as archive:
        if results.is_dir():
            archive.add(results, arcname=name)
    with tarfile.open(destination / "logs.tar.gz", "w:gz") as archive:
        for path in logs:
            if path.is_file():
                data = path.read_bytes()[-65536:]
                info = tarfile.TarInfo(path.name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def build_plan(args: argparse.Namespace) -> Plan:
    dry = args.dry_run_on_cpu
    settings = list(args.set)
    if dry:  # small, quick and single-threaded on a shared CPU; checkpoints often, to exercise resuming
        settings = ["model.compile=false", "data.batch_size=16", "threads=1", "log_every=1", *settings]
    default_root = Path("runs/gpu_claims_dry" if dry else "runs/gpu_claims")
    return Plan(
        data=args.data, results=args.results or default_root / "results", work=args.work or default_root / "work",
        device="cpu" if dry else args.device, stages=args.stages,
        methods=["ArcFace", "Softmax"] if dry else args.methods, seeds=[0] if dry else args.seeds,
        steps=4 if dry else args.steps, models=args.models,
        model_steps={name: 4 if dry else spec["steps"] for name, spec in MODELS.items()},
        attack=args.attack, draws=[0] if dry else args.draws, identities=2 if dry else args.identities,
        inversion_steps=2 if dry else args.inversion_steps, inversion_batch=2 if dry else args.inversion_batch,
        starts=args.starts, precision=args.precision, parallel=2 if dry else args.parallel,
        workers=0 if dry and args.workers is None else args.workers, settings=settings,
        eval_pairs=20 if dry else args.eval_pairs, angle_images=64 if dry else args.angle_images,
        checkpoint_every=2 if dry else args.checkpoint_every, calibration_batches=2 if dry else args.calibration_batches,
        grids=not args.no_grids,
    )


def run_stages(plan: Plan, deadline: float | None, margin: float, dry: bool) -> dict[str, float]:
    """Every asked stage in order (inversion trains its models first); returns the counts printed."""
    counts: dict[str, float] = {}
    training_stages = [s for s in ("ablation", "models") if s in plan.stages or (s == "models" and "inversion" in plan.stages)]
    for stage in training_stages:
        jobs, skipped = ablation_jobs(plan) if stage == "ablation" else model_jobs(plan)
        parallel = min(plan.parallel, max(1, len(jobs)))
        write_specs(jobs, plan.workers if plan.workers is not None else data_workers(parallel, os.cpu_count() or 2))
        scheduler = Scheduler(parallel, deadline, margin=margin, startup_s=20.0 if dry else 60.0, tail_s=20.0 if dry else 30.0)
        log.info("%s: %d done before, %d to run, %d at a time", stage, skipped, len(jobs), parallel)
        outcome = scheduler.run(jobs)
        counts.update({f"{stage}_skipped": skipped, f"{stage}_done": len(outcome.done), f"{stage}_stopped": len(outcome.stopped),
                       f"{stage}_failed": len(outcome.failed), f"{stage}_left": len(jobs) - len(outcome.done)})
        if outcome.aggregate_rate is not None:
            counts[f"{stage}_steps_per_s_all_jobs"] = round(outcome.aggregate_rate, 1)
    if "inversion" in plan.stages:
        done, left = run_inversions(plan, deadline, margin, first_estimate_s=30.0 if dry else 60.0)
        counts.update(inversion_done=done, inversion_left=left)
    return counts


def write_summaries(plan: Plan) -> list[str]:
    """The tables of what the results folder holds (markdown beside the results); returns the figure lines."""
    figures = []
    tables = []
    if "ablation" in plan.stages:
        tables.append((plan.results / f"ablation_steps{plan.steps}" / "table.md",
                       summarize_ablation(plan.results / f"ablation_steps{plan.steps}", plan.methods)))
    if "models" in plan.stages or "inversion" in plan.stages:
        tables.append((plan.results / "models" / "table.md", summarize_models(plan.results / "models", plan.models)))
    if "inversion" in plan.stages:
        tables.append((plan.results / "inversion" / "summary.md", summarize_inversion(plan.results / "inversion", plan.models, plan.draws)))
    for path, (lines, table) in tables:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table, encoding="utf-8")
        figures += lines
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(REPO / "src"))  # this checkout's library first
    if argv[:1] == ["--worker"]:  # internal: one training, in its own process
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
        return worker(Path(argv[1]))
    from ablation import METHODS
    from gpu_prepare import check

    from arcface.data.errors import DataError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="inversion trains its models first")
    parser.add_argument("--data", type=Path, default=Path("gpu_data"), help="the folder benchmarks/gpu_prepare.py builds")
    parser.add_argument("--results", type=Path, help="finished work, small files (default runs/gpu_claims/results)")
    parser.add_argument("--work", type=Path, help="runs and checkpoints (default runs/gpu_claims/work)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="ablation seeds")
    parser.add_argument("--steps", type=int, default=2469, help="ablation training steps")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS), help="models trained and inverted")
    parser.add_argument("--attack", type=float, default=16.0, help="adversarial model: max per-image L2 radius of the one-step attack")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2], help="inversion: seeds of the draws of targets")
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--inversion-steps", type=int, default=300)
    parser.add_argument("--inversion-batch", type=int, default=50)
    parser.add_argument("--starts", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="inversion precision")
    parser.add_argument("--parallel", type=int, default=9, help="trainings at once")
    parser.add_argument("--workers", type=int, help="data-loading processes per training (default: from the CPU count)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--set", action="append", default=[], help="key=value for every training (use a new --results)")
    parser.add_argument("--eval-pairs", type=int, default=0, help="0: all 1,000 pairsDevTest pairs")
    parser.add_argument("--angle-images", type=int, default=0, help="0: all training faces")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (resume on the same machine)")
    parser.add_argument("--calibration-batches", type=int, default=41, help="adversarial model: clean batches for the BatchNorm statistics")
    parser.add_argument("--no-grids", action="store_true", help="no PNG grid of inverted faces")
    parser.add_argument("--deadline-s", type=float, default=0, help="everything stopped this many seconds after the start (0: none)")
    parser.add_argument("--margin", type=float, default=1.15, help="slack factor on time estimates")
    parser.add_argument("--export", type=Path, help="write results.tar.gz and logs.tar.gz here at the end")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="the tiny CPU version (see the module docstring)")
    args = parser.parse_args(argv)
    if args.parallel < 1 or args.steps < 1 or args.identities < 2 or args.deadline_s < 0 or args.margin < 1:
        parser.error("--parallel and --steps must be >= 1, --identities >= 2, --deadline-s >= 0, --margin >= 1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    started, wall_start = time.monotonic(), time.time()
    deadline = started + args.deadline_s if args.deadline_s > 0 else None
    plan = build_plan(args)
    counts: dict[str, float] = {}
    try:
        check(plan.data)
        if plan.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise DataError("no CUDA device (--dry-run-on-cpu tries the script on the CPU, --device cpu runs it there)")
        plan.results.mkdir(parents=True, exist_ok=True)
        counts = run_stages(plan, deadline, args.margin, args.dry_run_on_cpu)
        figures = write_summaries(plan)
    except (DataError, SettingsMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if args.export is not None:  # whatever finished, even when this call broke
            this_call = [p for p in (plan.work / "logs").glob("*.log") if p.stat().st_mtime >= wall_start]
            export(plan.results, sorted(this_call), args.export)
    for key, value in counts.items():
        print(f"{key}={value}", flush=True)
    for line in figures:
        print(line, flush=True)
    remaining = sum(v for k, v in counts.items() if k.endswith("_left"))
    print(f"remaining={remaining}", flush=True)
    print(f"call_seconds={time.monotonic() - started:.0f}", flush=True)
    return 1 if any(v for k, v in counts.items() if k.endswith("_failed")) else 0


if __name__ == "__main__":
    sys.exit(main())
