"""Speed of an inversion step: what the BatchNorm-statistics prior costs, three ways of computing it.

Run from the repository root::

    .venv/bin/python benchmarks/inversion_speed.py                  # iresnet18, batch 50, bf16, 3 rounds
    .venv/bin/python benchmarks/inversion_speed.py --batch 16 --precision fp32

One inversion step of ``arcface.invert.invert`` (close-set margin loss of a CosFace head, the
default Fourier images, shift and mirror views, Adam) is timed five ways, alternately in each
round (a, b, c, d, e, a, b, ...) so that the machine's noise falls on all of them alike:

* ``library``: the prior as the library computes it (``BNStatistics`` with
  ``arcface.invert.channel_moments``: on the CPU, sums as matrix products with ones, a one-pass backward).
* ``var_mean``: the library's previous hook, one ``torch.var_mean`` pass in the features' own dtype
  and autograd's backward.
* ``float_copy``: the first hook (a float32 copy of every BatchNorm input, then its mean, then its
  variance).
* ``no_prior``: lambda_bn = 0 with the hooks removed, the cost of the network alone.
* ``lambda0``: the library at lambda_bn = 0 (the paper's ablation): L_bn is still computed, for the
  log, but of detached features, so the backward pass skips it. Before, a lambda-0 step cost what a
  ``library`` step does.

The backbone is built with random weights (speed does not depend on them). Each timing is one call
of ``invert`` with ``--steps`` steps after a warm-up call; the figure is the best of ``--rounds``.
Printed, one figure a line: ``<way>_s_per_step``, ``<way>_images_per_s`` and
``library_speedup_vs_var_mean``, ``library_speedup_vs_float_copy`` (their time / library time, the
median of the rounds' ratios) and ``lambda0_speedup_vs_library`` (library time / lambda0 time, likewise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager

import torch

from arcface.backbones import create_backbone
from arcface.heads import create_head
from arcface.invert import InversionConfig, invert_classes
from arcface.invert.bn_prior import BNStatistics

from inversion import emit


def var_mean_hook(self: BNStatistics, module, inputs, output) -> None:
    """The previous hook, kept here as a baseline: one ``torch.var_mean`` pass, autograd's backward."""
    variance, mean = torch.var_mean(inputs[0], dim=(0, 2, 3), correction=0)
    self._record(module, variance.float(), mean.float())


def float_copy_hook(self: BNStatistics, module, inputs, output) -> None:
    """The first hook, kept here as a baseline: float32 copy, then mean, then variance."""
    features = inputs[0].float()
    mean = features.mean(dim=(0, 2, 3))
    variance = features.var(dim=(0, 2, 3), unbiased=False)
    self._record(module, variance, mean)


@contextmanager
def hooks(way: str):
    """Patch ``BNStatistics`` for one way of computing the prior (restored on exit)."""
    saved = {name: getattr(BNStatistics, name) for name in ("_hook", "__enter__", "loss")}
    if way == "var_mean":
        BNStatistics._hook = var_mean_hook
    elif way == "float_copy":
        BNStatistics._hook = float_copy_hook
    elif way == "no_prior":
        BNStatistics.__enter__ = lambda self: self  # no hooks registered
        BNStatistics.loss = lambda self: torch.zeros(())
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(BNStatistics, name, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="iresnet18")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone)  # as load_for_inversion gives it; invert makes the input channels-last
    head = create_head("cosface", embedding_size=512, num_classes=max(args.batch, 2), scale=32.0)
    classes = list(range(args.batch))
    ways = ["library", "var_mean", "float_copy", "no_prior", "lambda0"]
    times: dict[str, list[float]] = {way: [] for way in ways}

    def one_call(way: str, steps: int) -> float:
        config = InversionConfig(steps=steps, precision=args.precision, lambda_bn=0.0 if way in ("no_prior", "lambda0") else 0.05)
        with hooks(way):
            start = time.perf_counter()
            invert_classes(backbone, head, classes, config)
            return (time.perf_counter() - start) / steps

    for way in ways:
        one_call(way, 1)  # warm-up: allocator, kernels
    for _ in range(args.rounds):
        for way in ways:
            times[way].append(one_call(way, args.steps))
    for way in ways:
        best = min(times[way])
        emit(f"{way}_s_per_step", best)
        emit(f"{way}_images_per_s", args.batch / best)
    emit("library_speedup_vs_var_mean", statistics.median(v / l for v, l in zip(times["var_mean"], times["library"])))
    emit("library_speedup_vs_float_copy", statistics.median(c / l for c, l in zip(times["float_copy"], times["library"])))
    emit("lambda0_speedup_vs_library", statistics.median(l / z for l, z in zip(times["library"], times["lambda0"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
