"""Variants of the LFW CPU recipe at a fixed number of steps: which change buys accuracy.

The CPU recipe trains for 60 minutes, about 1,750 steps of batch 64 on a 2-core CPU. Trying
a dozen variants of it here takes a day; on one GPU each takes a minute, so this script runs the
recipe by step count instead of time (``--steps``), on whatever device is available, and prints
``<variant>_best=<percent>`` (best of the periodic evaluations), ``<variant>_final=<percent>`` and
``<variant>_minutes=<wall>``. Accuracy is pairsDevTest 10-fold (stratified), people never seen in training.

Run from the repository root, with LFW prepared by ``arcface lfw`` (its cache holds the list)::

    .venv/bin/python benchmarks/lfw_sweep.py --train-list runs/cache/lfw_devtrain.txt \\
        --pairs ../shared/data/lfw_deepfunneled/pairsDevTest.txt --images runs/cache/lfw_aligned \\
        --variants base augment --steps 1745

A variant is a name from VARIANTS, or ``name:key=value,key=value`` for ad-hoc settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from arcface.configs import recipe_path
from arcface.train.config import load_config
from arcface.train.loop import train

AUGMENT = ["data.augment.scale=0.1", "data.augment.shift=0.05", "data.augment.rotate=10"]
AUGMENT_ALL = [*AUGMENT, "data.augment.color=0.2", "data.augment.grayscale=0.1", "data.augment.erase=0.3"]
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "augment": AUGMENT,
    "augment_all": AUGMENT_ALL,
    "erase": ["data.augment.erase=0.5"],
    "augment_all_wd1e-3": [*AUGMENT_ALL, "optim.weight_decay=1e-3"],
    "augment_all_emb256": [*AUGMENT_ALL, "model.embedding_size=256"],
    "augment_all_s64m05": [*AUGMENT_ALL, "head.scale=64", "head.m2=0.5"],
    "augment_all_dropout04": [*AUGMENT_ALL, "model.dropout=0.4"],
    "augment_all_lr02": [*AUGMENT_ALL, "optim.lr=0.2"],
    "augment_all_cosface": [*AUGMENT_ALL, "head.name=cosface", "head.scale=32"],
    "augment_all_m03": [*AUGMENT_ALL, "head.m2=0.3"],
    "augment_strong": ["data.augment.scale=0.15", "data.augment.shift=0.08", "data.augment.rotate=15",
                       "data.augment.color=0.3", "data.augment.grayscale=0.2", "data.augment.erase=0.5"],
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    if ":" in text:
        name, _, settings = text.partition(":")
        return name, [s for s in settings.split(",") if s]
    if text not in VARIANTS:
        raise SystemExit(f"unknown variant {text!r}; known: {', '.join(VARIANTS)} (or name:key=value,...)")
    return text, VARIANTS[text]


def read_accuracies(run: Path) -> list[float]:
    accuracies = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "eval" in entry:
            accuracies.extend(entry["eval"].values())
    return accuracies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-list", required=True, help="'path label' list of the training images")
    parser.add_argument("--images", required=True, help="root of the aligned images (pairs and list paths are relative to it)")
    parser.add_argument("--pairs", required=True, help="pairsDevTest.txt")
    parser.add_argument("--variants", nargs="+", default=["base"])
    parser.add_argument("--steps", type=int, default=1745, help="training steps (1,745 = the 60-minute CPU run)")
    parser.add_argument("--eval-every", type=int, default=175)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/lfw_sweep"))
    parser.add_argument("--set", action="append", default=[], help="key=value for every variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for text in args.variants:
        name, settings = parse_variant(text)
        common = [
            f"data.source={args.train_list}", f"data.root={args.images}", f"data.num_workers={args.workers}",
            f"eval.pairs={args.pairs}", f"eval.images={args.images}", f"eval.every_steps={args.eval_every}",
            "schedule.time_budget_minutes=0", f"schedule.max_steps={args.steps}", "device=auto",
            "checkpoint.every_minutes=0", "checkpoint.keep_last=1",
        ]
        start = time.perf_counter()
        train(load_config(recipe_path("lfw_cpu"), [*common, *settings, *args.set]), args.out / name)
        accuracies = read_accuracies(args.out / name)
        print(f"{name}_best={100 * max(accuracies):.1f}", flush=True)
        print(f"{name}_final={100 * accuracies[-1]:.1f}", flush=True)
        print(f"{name}_minutes={(time.perf_counter() - start) / 60:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
