"""The ArcFace paper's loss ablation on real faces: one recipe, nine losses, several seeds.

Recipe: the LFW CPU recipe (``configs/lfw_cpu.yaml``: iresnet18, 512-D, dropout 0.2, batch 64, SGD 0.1
with warmup and polynomial decay, flips + zoom/shift/rotation/color/gray/erasing, bf16) cut to
``--steps`` (230 by default: about 8 minutes on the 2-core CPU, so that 9 losses x 3 seeds fit in about
4 hours). Training length is a step count, so a GPU run and a CPU run mean the same thing. Only the
head changes between rows, with the paper's settings (s = 64):

    Softmax          plain fully connected layer + softmax (unnormalized)
    NormFace         cos(theta), normalized embedding and centers
    SphereFace       cos(m1*theta), m1 = 1.35 (the paper's combined-framework setting)
    CosFace          cos(theta) - 0.35
    ArcFace          cos(theta + 0.5)
    Combined         cos(theta + 0.3) - 0.2
    ArcFace+Intra    ArcFace + mean target angle / pi
    ArcFace+Inter    ArcFace - mean angle between centers / pi
    ArcFace+Triplet  ArcFace + batch-hard angular triplet (margin 0.35)

Each run is evaluated with ``arcface eval`` on ``pairsDevTest.txt`` (1,000 pairs of people never seen
in training, 10 stratified folds, flip test): accuracy and TAR@FAR=1e-2. A finished run leaves
``<out>/results/<method>_seed<k>.json``; running the script again skips it, so the sweep can be
spread over several sittings (a killed run is started again from scratch). Printed, one per line:
``<method>_accuracy_mean``, ``_accuracy_std`` (over seeds, in percent), ``_tar_far1e-2_mean``/``_std``,
``_runs``; and ``<out>/table.md``, the table of docs/RESULTS.md.

Run from the repository root after ``arcface lfw`` prepared the aligned images (runs/cache)::

    .venv/bin/python benchmarks/ablation.py --train-list runs/cache/lfw_devtrain.txt \\
        --images runs/cache/lfw_aligned --pairs ../shared/data/lfw_deepfunneled/pairsDevTest.txt --out runs/ablation

``--parallel 6`` runs six trainings at once (one GPU); on the CPU keep 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path

from parallel import run_all

log = logging.getLogger("benchmarks.ablation")

REPO = Path(__file__).resolve().parents[1]
ARCFACE = ["head.name=arcface", "head.scale=64", "head.m2=0.5"]
METHODS: dict[str, list[str]] = {
    "Softmax": ["head.name=softmax", "head.scale=null"],
    "NormFace": ["head.name=normface", "head.scale=64"],
    "SphereFace": ["head.name=sphereface", "head.scale=64", "head.m1=1.35"],
    "CosFace": ["head.name=cosface", "head.scale=64", "head.m3=0.35"],
    "ArcFace": ARCFACE,
    "Combined": ["head.name=combined", "head.scale=64", "head.m1=1.0", "head.m2=0.3", "head.m3=0.2"],
    "ArcFace+Intra": [*ARCFACE, "head.options.intra_weight=1.0"],
    "ArcFace+Inter": [*ARCFACE, "head.options.inter_weight=1.0"],
    "ArcFace+Triplet": [*ARCFACE, "head.options.triplet_weight=1.0", "head.options.triplet_margin=0.35"],
}


def slug(method: str) -> str:
    return method.lower().replace("+", "_")


def seed_entries(results: Path, method: str) -> list[dict]:
    """The result files of ``method``'s finished runs in ``results``, by seed."""
    return sorted((json.loads(p.read_text()) for p in results.glob(f"{slug(method)}_seed*.json")), key=lambda e: e["seed"])


def accuracy_and_tar(entries: list[dict]) -> tuple[list[float], list[float]]:
    """Per run, pairsDevTest accuracy and TAR@FAR=1e-2 in percent (runs without a TAR figure left out of the second)."""
    accuracy = [100 * e["accuracy"] for e in entries]
    tar = [100 * e["tar_at_far"]["1e-2"] for e in entries if e["tar_at_far"].get("1e-2") is not None]
    return accuracy, tar


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "arcface.cli", *args]


def run_commands(method: str, seed: int, args, run: Path, result: Path) -> list[list[str]]:
    """Train, evaluate, then write the result file (last, so that only finished runs are skipped)."""
    settings = [
        f"data.source={args.train_list}", f"data.root={args.images}", f"data.num_workers={args.workers}",
        "eval.pairs=null", "eval.images=null", "eval.every_steps=0",  # `arcface eval` below reports more
        "schedule.time_budget_minutes=0", f"schedule.max_steps={args.steps}", "checkpoint.every_minutes=0",
        "checkpoint.keep_last=1", f"seed={seed}", f"device={args.device}", *METHODS[method], *args.set,
    ]
    train = cli("train", str(REPO / "configs" / "lfw_cpu.yaml"), "--out", str(run), *sum((["--set", s] for s in settings), []))
    evaluate = cli("eval", str(run), "--pairs", str(args.pairs), "--images", str(args.images), "--align", "none",
                   "--no-cache", "--quiet", "--out", str(run / "eval.json"))
    record = [sys.executable, str(Path(__file__).resolve()), "--record", str(run), str(result), method, str(seed)]
    return [train, evaluate, record]


def record(run: Path, result: Path, method: str, seed: int) -> None:
    report = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    entry = {
        "method": method, "seed": seed, "accuracy": report["accuracy"], "accuracy_std_folds": report["accuracy_std"],
        "tar_at_far": report["tar_at_far"], "eer": report["eer"], "steps": summary["steps"],
        "training_seconds": summary["training_seconds"], "nonfinite_skipped": summary["nonfinite_skipped"],
        "settings": METHODS[method],
    }
    result.parent.mkdir(parents=True, exist_ok=True)
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=1))
    tmp.replace(result)


def summarize(results: Path, methods: list[str]) -> tuple[list[str], str]:
    """Figure lines and a markdown table (mean +- population std over seeds, percent)."""
    lines = ["| Method | Accuracy (%) | TAR@FAR=1e-2 (%) | Runs | Accuracy per seed |", "|---|---|---|---|---|"]
    figures = []
    for method in methods:
        entries = seed_entries(results, method)
        if not entries:
            lines.append(f"| {method} | not run | | 0 | |")
            continue
        accuracy, tar = accuracy_and_tar(entries)
        key = slug(method)
        figures += [
            f"{key}_accuracy_mean={statistics.fmean(accuracy):.2f}", f"{key}_accuracy_std={statistics.pstdev(accuracy):.2f}",
            *([f"{key}_tar_far1e-2_mean={statistics.fmean(tar):.2f}", f"{key}_tar_far1e-2_std={statistics.pstdev(tar):.2f}"] if tar else []),
            f"{key}_runs={len(entries)}",
        ]
        per_seed = ", ".join(f"{a:.1f}" for a in accuracy)
        tar_cell = f"{statistics.fmean(tar):.2f} ± {statistics.pstdev(tar):.2f}" if tar else "n/a (too few pairs)"
        lines.append(f"| {method} | {statistics.fmean(accuracy):.2f} ± {statistics.pstdev(accuracy):.2f} | {tar_cell} | {len(entries)} | {per_seed} |")
    return figures, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--record"]:  # internal: the last command of each run
        run, result, method, seed = argv[1:5]
        record(Path(run), Path(result), method, int(seed))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-list", type=Path, required=True, help="the LFW recipe's list (runs/cache/lfw_devtrain.txt)")
    parser.add_argument("--images", type=Path, required=True, help="aligned LFW images (runs/cache/lfw_aligned)")
    parser.add_argument("--pairs", type=Path, required=True, help="pairsDevTest.txt")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=230, help="training steps (230: about 8 minutes on the 2-core CPU)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--set", action="append", default=[], help="key=value for every run (changes the recipe: use a new --out)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    for path in (args.train_list, args.images, args.pairs):
        if not path.exists():
            parser.error(f"{path} not found (run `arcface lfw` first to align LFW)")
    results = args.out / "results"
    jobs = {}
    for method in args.methods:
        for seed in args.seeds:
            name = f"{slug(method)}_seed{seed}"
            if (results / f"{name}.json").is_file():
                log.info("%s: done already, skipped", name)
                continue
            run = args.out / "runs" / name
            shutil.rmtree(run, ignore_errors=True)  # an unfinished run starts again
            jobs[name] = run_commands(method, seed, args, run, results / f"{name}.json")
    log.info("%d runs to do (%d in parallel)", len(jobs), args.parallel)
    failed = run_all(jobs, args.parallel, args.out / "logs", keep_going=True)
    for name in failed:
        log.error("%s failed; see %s", name, args.out / "logs" / f"{name}.log")
    figures, table = summarize(results, args.methods)
    for line in figures:
        print(line, flush=True)
    (args.out / "table.md").write_text(table)
    print(table, end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
