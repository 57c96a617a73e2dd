"""Sub-center ArcFace cleaning on real faces with known label noise (the paper's Section 4.2 setting, small).

Data: LFW View 1 training people with at least ``--min-images`` images (default 4: 430 people, 4,964
aligned images; with fewer, a class has too few samples for a dominant sub-center to mean much).
Open-set noise images: the View 1 training people with a single image (2,854 people never in the
training classes, and never in pairsDevTest). Evaluation: pairsDevTest.txt (people never seen in
training), 10 stratified folds.

For each noise kind (closed, open) at ``--rate`` (0.3):
  (a) ArcFace K=1 on the clean data (shared by both kinds)
  (b) ArcFace K=1 on the noisy data
  (c) sub-center ArcFace K=3 on the noisy data (``--voting-steps`` steps, default ``--steps``: the model
      that votes may be trained longer than the arms it is compared with)
  (d) `arcface clean` with (c) at 75 degrees, then ArcFace K=1 from scratch on the cleaned list
  (e) with ``--finetune-steps N``: instead of (d), fine-tune (c) on the cleaned list for N steps, its
      backbone (``model.init_from``) and a K=1 head from its dominant sub-centers (``head.init_from``)
  (o) with ``--oracle``: ArcFace K=1 from scratch on exactly the samples the ground truth calls clean,
      the best any cleaning that drops samples can do (its gap recovered bounds (d)'s)
Printed, one per line: noise rates before/after cleaning, detection precision/recall, the four
accuracies, and the gap recovered (d - b) / (a - b); for the arms asked for, ``{kind}_o_*`` and
``{kind}_e_*`` lines the same way.

Run from the repository root after `arcface lfw` prepared the aligned images (runs/cache)::

    .venv/bin/python benchmarks/cleaning.py --train-list runs/cache/lfw_devtrain.txt \\
        --aligned runs/cache/lfw_aligned --lfw ../shared/data/lfw_deepfunneled --steps 1000 --parallel 1

Training length is a step count so that a GPU run and a CPU run mean the same; ``--parallel`` runs
that many trainings at once (on one GPU, 5 fit). A training whose ``summary.json`` is already in
``--work`` is not run again, so an interrupted sweep goes on where it stopped and a finished one can be
re-scored (``--extra-pairs``) without retraining.

How sure the gap is: the final models are scored again with ``arcface eval`` on the evaluation pairs
and, with ``--extra-pairs`` (from ``benchmarks/heldout_pairs.py``: 3,000 + 3,000 pairs of the same
never-trained people), on six times as many. All models are scored on the same deterministic folds,
so the differences a - b and d - b are paired per fold; the ``_se`` lines are their standard errors
over the 10 folds and, by the delta method, that of the gap recovered (evaluation noise only: each arm
is still one training run). Lines of the extra set start with ``extra_``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from parallel import run_all

REPO = Path(__file__).resolve().parents[1]
HEAD = ["head.name=arcface", "head.scale=32", "head.m2=0.4"]
SUBCENTER_HEAD = ["head.name=subcenter_arcface", "head.scale=32", "head.m2=0.4"]


def write_lists(train_list: Path, aligned: Path, lfw: Path, min_images: int, out: Path) -> tuple[Path, Path]:
    """The clean list (people with >= min_images, labels 0..C-1) and the outsider list (single-image people)."""
    entries = [line.rsplit(" ", 1) for line in train_list.read_text().splitlines() if line.strip()]
    names = [Path(path).parent.name for path, _ in entries]
    counts = Counter(names)
    kept = sorted({n for n in names if counts[n] >= min_images})
    label = {n: i for i, n in enumerate(kept)}
    clean = out / "clean.txt"
    clean.write_text("".join(f"{aligned.resolve() / n / Path(p).name} {label[n]}\n" for (p, _), n in zip(entries, names) if n in label))
    singles = [line.split("\t") for line in (lfw / "peopleDevTrain.txt").read_text().splitlines()[1:] if line.strip()]
    outside = out / "outside.txt"
    outside.write_text("".join(
        f"{aligned.resolve() / name / f'{name}_0001.jpg'} 0\n" for name, count in singles
        if count.strip() == "1" and (aligned / name / f"{name}_0001.jpg").is_file()))
    return clean, outside


def write_oracle_list(truth: Path, out: Path) -> Path:
    """The samples ``truth.tsv`` (from ``arcface data corrupt``) calls clean, labels renumbered 0..C'-1
    in order of the old labels (a class whose samples were all corrupted is gone)."""
    rows = [line.split("\t") for line in truth.read_text().splitlines()[1:] if line.strip()]
    kept = [(path, int(label)) for path, label, noisy, _ in rows if noisy == "0"]
    renumber = {old: new for new, old in enumerate(sorted({label for _, label in kept}))}
    out.write_text("".join(f"{path} {renumber[label]}\n" for path, label in kept))
    return out


def check_same_threshold(cleaned: Path, threshold_deg: float) -> None:
    """Exit if ``cleaned`` holds a cleaning at another threshold: the finished trainings on its list
    would be reused for a list they were not trained on."""
    earlier = cleaned / "report.json"
    if earlier.is_file() and (before := json.loads(earlier.read_text())["threshold_deg"]) != threshold_deg:
        sys.exit(f"{cleaned} was cleaned at {before} degrees, this run asks for {threshold_deg}: use another --work folder")


def arcface(*args: str) -> list[str]:
    return [sys.executable, "-m", "arcface.cli", *args]


def train_command(name: str, source: Path, head: list[str], args, work: Path, steps: int | None = None) -> list[str]:
    settings = [
        f"data.source={source}", f"data.num_workers={args.workers}", f"eval.pairs={args.pairs or args.lfw / 'pairsDevTest.txt'}",
        f"eval.images={args.aligned}", "eval.every_steps=0", "schedule.time_budget_minutes=0", f"schedule.max_steps={steps or args.steps}",
        "checkpoint.every_minutes=0", "checkpoint.keep_last=1", "device=auto", "model.dropout=0.2", *head,
    ]
    return arcface("train", str(REPO / "configs" / "lfw_cpu.yaml"), "--out", str(work / name), *sum((["--set", s] for s in settings), []))


def accuracy(work: Path, name: str) -> float:
    summary = json.loads((work / name / "summary.json").read_text())
    return 100 * next(iter(summary["final_eval"].values()))


def fold_accuracies(work: Path, name: str, pairs: Path, aligned: Path, workers: int) -> np.ndarray:
    """The model's per-fold accuracies (%) on a pairs file, by ``arcface eval`` with flip-test and bf16 autocast,
    as the training's own evaluation (so the pairsDevTest means equal the summary's accuracies)."""
    report = work / f"{name}_{pairs.stem}.json"
    if not report.is_file():
        subprocess.run(arcface("eval", str(work / name), "--pairs", str(pairs), "--images", str(aligned), "--align", "none",
                               "--precision", "bf16", "--workers", str(workers), "--no-cache", "--quiet", "--out", str(report)),
                       check=True, stdout=subprocess.DEVNULL)
    return 100 * np.asarray(json.loads(report.read_text())["fold_accuracies"], dtype=np.float64)


def paired_gap(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> dict[str, float]:
    """Gap a - b, win d - b and gap recovered (d - b) / (a - b), with standard errors from paired folds.

    Args:
        a, b, d: (F,) per-fold accuracies of the three models on the same folds.

    The ratio's error is the delta method's: var(r) = (var(W) + r^2 var(G) - 2 r cov(W, G)) / G^2 with
    W = d - b, G = a - b and the variances those of the fold means.
    """
    folds = len(a)
    gap, win = a - b, d - b
    covariance = np.cov(np.stack([win, gap]), ddof=1) / folds
    g, w = gap.mean(), win.mean()
    ratio = w / g if g else math.nan
    ratio_var = (covariance[0, 0] + ratio**2 * covariance[1, 1] - 2 * ratio * covariance[0, 1]) / g**2 if g else math.nan
    return {"a_minus_b": g, "a_minus_b_se": math.sqrt(covariance[1, 1]), "d_minus_b": w, "d_minus_b_se": math.sqrt(covariance[0, 0]),
            "gap_recovered_pct": 100 * ratio, "gap_recovered_se_pct": 100 * math.sqrt(max(ratio_var, 0.0))}


def pending(jobs: dict[str, list[str]], work: Path) -> dict[str, list[list[str]]]:
    """The jobs whose training has not finished yet (no summary.json), as run_all wants them.

    A finished training of another step count (a work folder reused with other ``--steps``) is an error,
    not silently reused."""
    done = [name for name in jobs if (work / name / "summary.json").is_file()]
    for name in done:
        wanted = next(int(arg.split("=", 1)[1]) for arg in jobs[name] if arg.startswith("schedule.max_steps="))
        trained = json.loads((work / name / "summary.json").read_text())["steps"]
        if trained != wanted:
            sys.exit(f"{work / name} was trained for {trained} steps, this run asks for {wanted}: use another --work folder")
    for name in done:
        print(f"# {name}: finished before, not run again", file=sys.stderr)
    return {name: [command] for name, command in jobs.items() if name not in done}


def emit(key: str, value) -> None:
    print(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-list", type=Path, required=True, help="the LFW recipe's list (runs/cache/lfw_devtrain.txt)")
    parser.add_argument("--aligned", type=Path, required=True, help="aligned LFW images (runs/cache/lfw_aligned)")
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder (pairsDevTest.txt, peopleDevTrain.txt)")
    parser.add_argument("--pairs", type=Path, help="evaluation pairs (default <lfw>/pairsDevTest.txt)")
    parser.add_argument("--extra-pairs", type=Path, help="a second, larger pairs file to score the final models on")
    parser.add_argument("--min-images", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--kinds", nargs="+", default=["closed", "open"])
    parser.add_argument("--threshold-deg", type=float, default=75.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--voting-steps", type=int, help="steps of the sub-center model (c) that the cleaning uses (default --steps)")
    parser.add_argument("--oracle", action="store_true", help="also arm (o): K=1 on the truly clean samples only")
    parser.add_argument("--finetune-steps", type=int, default=0, help="> 0: also arm (e), fine-tuning (c) on the cleaned list for this many steps")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/cleaning"))
    args = parser.parse_args(argv)
    if args.finetune_steps < 0:
        parser.error(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    if args.voting_steps is not None and args.voting_steps < 1:
        parser.error(f"--voting-steps must be >= 1, got {args.voting_steps}")
    args.work.mkdir(parents=True, exist_ok=True)
    clean, outside = write_lists(args.train_list, args.aligned, args.lfw, args.min_images, args.work)
    emit("clean_samples", len(clean.read_text().splitlines()))
    emit("outside_images", len(outside.read_text().splitlines()))
    for kind in args.kinds:
        command = arcface("data", "corrupt", str(clean), "--rate", str(args.rate), "--kind", kind, "--seed", str(args.seed),
                          "--out", str(args.work / f"noisy_{kind}"), *(["--outside", str(outside)] if kind == "open" else []))
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    phase1 = {"a_clean_k1": train_command("a_clean_k1", clean, HEAD, args, args.work)}
    for kind in args.kinds:
        noisy = args.work / f"noisy_{kind}" / "train.txt"
        phase1[f"b_{kind}_k1"] = train_command(f"b_{kind}_k1", noisy, HEAD, args, args.work)
        phase1[f"c_{kind}_k3"] = train_command(f"c_{kind}_k3", noisy, SUBCENTER_HEAD, args, args.work, steps=args.voting_steps)
    run_all(pending(phase1, args.work), args.parallel, args.work)
    phase2 = {}
    for kind in args.kinds:
        cleaned = args.work / f"cleaned_{kind}"
        check_same_threshold(cleaned, args.threshold_deg)
        subprocess.run(arcface("clean", str(args.work / f"c_{kind}_k3"), str(args.work / f"noisy_{kind}" / "train.txt"),
                               "--threshold-deg", str(args.threshold_deg), "--out", str(cleaned), "--quiet"),
                       check=True, stdout=subprocess.DEVNULL)
        report = json.loads((cleaned / "report.json").read_text())
        truth = report["ground_truth"]
        emit(f"{kind}_noise_rate_before_pct", 100 * truth["noise_rate_before"])
        emit(f"{kind}_noise_rate_after_pct", 100 * truth["noise_rate_after"])
        emit(f"{kind}_dropped_precision_pct", 100 * truth["precision"])
        emit(f"{kind}_dropped_recall_pct", 100 * truth["recall"])
        emit(f"{kind}_kept_samples", report["kept"])
        phase2[f"d_{kind}_cleaned_k1"] = train_command(f"d_{kind}_cleaned_k1", cleaned / "train.txt", HEAD, args, args.work)
        if args.oracle:
            oracle = write_oracle_list(args.work / f"noisy_{kind}" / "truth.tsv", args.work / f"oracle_{kind}.txt")
            phase2[f"o_{kind}_truth_k1"] = train_command(f"o_{kind}_truth_k1", oracle, HEAD, args, args.work)
        if args.finetune_steps > 0:
            start = [f"model.init_from={args.work / f'c_{kind}_k3'}", f"head.init_from={cleaned / 'dominant_centers.pt'}"]
            phase2[f"e_{kind}_finetuned_k1"] = train_command(f"e_{kind}_finetuned_k1", cleaned / "train.txt", HEAD + start, args, args.work,
                                                             steps=args.finetune_steps)
    run_all(pending(phase2, args.work), args.parallel, args.work)
    a = accuracy(args.work, "a_clean_k1")
    emit("a_clean_k1_accuracy", a)
    for kind in args.kinds:
        b, c, d = (accuracy(args.work, f"{prefix}") for prefix in (f"b_{kind}_k1", f"c_{kind}_k3", f"d_{kind}_cleaned_k1"))
        emit(f"{kind}_b_noisy_k1_accuracy", b)
        emit(f"{kind}_c_noisy_k3_accuracy", c)
        emit(f"{kind}_d_cleaned_retrained_accuracy", d)
        emit(f"{kind}_gap_recovered_pct", gap_recovered(a, b, d))
        for arm, name, what in optional_arms(kind, args):
            x = accuracy(args.work, name)
            emit(f"{kind}_{arm}_{what}_accuracy", x)
            emit(f"{kind}_{arm}_gap_recovered_pct", gap_recovered(a, b, x))
    pair_sets = [("", args.pairs or args.lfw / "pairsDevTest.txt")] + ([("extra_", args.extra_pairs)] if args.extra_pairs else [])
    for prefix, pairs in pair_sets:
        def folds(name: str) -> np.ndarray:
            return fold_accuracies(args.work, name, pairs, args.aligned, args.workers)

        a = folds("a_clean_k1")
        if prefix:
            emit(f"{prefix}a_clean_k1_accuracy", float(a.mean()))
        for kind in args.kinds:
            b, c, d = (folds(name) for name in (f"b_{kind}_k1", f"c_{kind}_k3", f"d_{kind}_cleaned_k1"))
            if prefix:
                emit(f"{prefix}{kind}_b_noisy_k1_accuracy", float(b.mean()))
                emit(f"{prefix}{kind}_c_noisy_k3_accuracy", float(c.mean()))
                emit(f"{prefix}{kind}_d_cleaned_retrained_accuracy", float(d.mean()))
            for key, value in paired_gap(a, b, d).items():
                if prefix or key.endswith("_se") or key.endswith("_se_pct"):
                    emit(f"{prefix}{kind}_{key}", float(value))
            for arm, name, what in optional_arms(kind, args):
                x = folds(name)
                if prefix:
                    emit(f"{prefix}{kind}_{arm}_{what}_accuracy", float(x.mean()))
                for key, value in paired_gap(a, b, x).items():
                    if not key.startswith("a_minus_b") and (prefix or key.endswith("_se") or key.endswith("_se_pct")):
                        emit(f"{prefix}{kind}_{key.replace('d_minus_b', f'{arm}_minus_b').replace('gap_', f'{arm}_gap_')}", float(value))
    return 0


def optional_arms(kind: str, args) -> list[tuple[str, str, str]]:
    """(arm letter, run name, what it is) of the arms asked for beyond (a)-(d)."""
    return [("o", f"o_{kind}_truth_k1", "truth")] * args.oracle + [("e", f"e_{kind}_finetuned_k1", "finetuned")] * (args.finetune_steps > 0)


def gap_recovered(a: float, b: float, d: float) -> float:
    """(d - b) / (a - b) in percent: how much of the accuracy the noise cost the cleaning won back."""
    return 100 * (d - b) / (a - b) if a != b else float("nan")


if __name__ == "__main__":
    sys.exit(main())
