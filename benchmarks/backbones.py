"""Benchmark the backbones' CPU speed in fp32 NCHW, fp32 channels_last and bf16 channels_last.

Run from the repository root::

    .venv/bin/python benchmarks/backbones.py                       # every backbone, B = 32, 3 timed steps
    .venv/bin/python benchmarks/backbones.py --models iresnet18 mobilefacenet --repeats 5

The full run takes several minutes (of the order of a quarter of an hour on a 2-core CPU;
IResNet-200 in fp32 is the slowest part); ``--models`` narrows it.

What is measured, for each backbone of ``list_backbones()`` built with ``create_backbone(name)``
((B, 3, 112, 112) faces -> (B, 512) embeddings), with two threads:

* Size: the number of parameters, and GFLOPs per 112x112 image (2 FLOPs per multiply-add, counted
  by ``torch.utils.flop_counter.FlopCounterMode`` over one eval-mode forward of a single image).
* Speed in three modes: ``fp32_nchw`` (eager PyTorch defaults), ``fp32_channels_last`` (model and
  input in ``torch.channels_last``) and ``bf16_channels_last`` (the same under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``; the weights stay fp32). For each mode, with a
  batch of ``--batch-size`` random faces: the forward alone (eval mode, ``torch.no_grad()``) and one
  training step's forward + backward (train mode, ``out.float().sum().backward()``, parameter
  gradients set to None before each step, no optimizer). One warm-up step, then the median of
  ``--repeats`` timed steps, reported in ms per image. The speedups compare fp32 NCHW with the
  fastest mode.
* insightface ops (IResNets only): our IResNet in ``bf16_channels_last`` training against the same
  network with every PReLU of ours (``arcface.backbones.prelu.PReLU``, faster backward) turned back
  into ``torch.nn.PReLU``, so that it runs exactly the operators of insightface's ``arcface_torch``
  iresnet. The two are timed alternately (ours, theirs, ours, theirs, ...) after a warm-up each;
  the ratio is the median of the per-pair ratios, below 1 meaning ours is faster.

``arcface.runtime.tune_cpu_allocator()`` is called once at start, as our trainer does.

Targets: IResNet-50 training (forward + backward) at least 3x faster than fp32 NCHW eager in our
best mode, and no slower than insightface's model in the same mode. For reference, measured on this
machine with insightface's own iresnet: IResNet-18 fp32 forward + backward about 165 ms/img, bf16
channels_last about 51 ms/img; IResNet-50 about 270 and 89 ms/img; ``torch.compile`` gave about 1.8x
on IResNet-18 forward + backward after a 74 s compile.

Output: one figure per line on stdout, ``key=value``; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from arcface.backbones import IRESNET_DEPTHS, create_backbone, list_backbones
from arcface.backbones.common import INPUT_SIZE
from arcface.backbones.prelu import PReLU
from arcface.runtime import tune_cpu_allocator

log = logging.getLogger("benchmarks.backbones")

DEFAULT_BATCH_SIZE = 32
DEFAULT_REPEATS = 3
NUM_THREADS = 2
IRESNET_NAMES = frozenset(f"iresnet{depth}" for depth in IRESNET_DEPTHS)
COMPARISON_MODE = "bf16_channels_last"


@dataclass(frozen=True)
class Mode:
    channels_last: bool
    bf16: bool


MODES = {
    "fp32_nchw": Mode(channels_last=False, bf16=False),
    "fp32_channels_last": Mode(channels_last=True, bf16=False),
    "bf16_channels_last": Mode(channels_last=True, bf16=True),
}
BASELINE_MODE = "fp32_nchw"


# ----------------------------------------------------------------------------- models and inputs


def build_model(name: str, mode: Mode, insightface_ops: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = create_backbone(name)
    if insightface_ops:
        use_torch_prelu(model)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def use_torch_prelu(model: nn.Module) -> None:
    """Turn each of our PReLUs into a plain ``nn.PReLU`` (same ``weight``), in place."""
    ours = [module for module in model.modules() if isinstance(module, PReLU)]
    if not ours:
        raise RuntimeError("the model has no arcface PReLU to replace")
    for module in ours:
        module.__class__ = nn.PReLU
    log.info("replaced %d PReLU modules by torch.nn.PReLU", len(ours))


def random_faces(batch_size: int, mode: Mode) -> torch.Tensor:
    faces = torch.randn(batch_size, 3, INPUT_SIZE, INPUT_SIZE)
    return faces.contiguous(memory_format=torch.channels_last) if mode.channels_last else faces


def autocast_for(mode: Mode) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if mode.bf16 else contextlib.nullcontext()


def parameter_count(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def gflops_per_image(model: nn.Module) -> float:
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE))
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------- steps and timing


def forward_step(model: nn.Module, faces: torch.Tensor, mode: Mode) -> None:
    with torch.no_grad(), autocast_for(mode):
        model(faces)


def training_step(model: nn.Module, faces: torch.Tensor, mode: Mode) -> None:
    """Forward + backward, starting from no gradients."""
    for param in model.parameters():
        param.grad = None
    with autocast_for(mode):
        out = model(faces)
    out.float().sum().backward()


def step_ms(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def median_step_ms(step: Callable[[], None], repeats: int) -> float:
    """One warm-up step, then the median of ``repeats`` timed steps."""
    step()
    return statistics.median(step_ms(step) for _ in range(repeats))


def alternating_step_ms(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Step times of each step, after a warm-up each, timed in turn (pair i = one of each)."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            times[key].append(step_ms(step))
    return times


def mode_ms_per_image(name: str, mode: Mode, batch_size: int, repeats: int) -> tuple[float, float]:
    """(forward, training step) ms per image of one backbone in one mode."""
    model = build_model(name, mode)
    faces = random_faces(batch_size, mode)
    model.eval()
    forward_ms = median_step_ms(functools.partial(forward_step, model, faces, mode), repeats)
    model.train()
    train_ms = median_step_ms(functools.partial(training_step, model, faces, mode), repeats)
    return forward_ms / batch_size, train_ms / batch_size


# ----------------------------------------------------------------------------- main


def emit(key: str, value: float | int | str, decimals: int = 3) -> None:
    text = f"{value:.{decimals}f}" if isinstance(value, float) else str(value)
    print(f"{key}={text}", flush=True)


def report_size(name: str) -> None:
    model = build_model(name, MODES[BASELINE_MODE])
    emit(f"{name}_params", parameter_count(model))
    emit(f"{name}_gflops", gflops_per_image(model), 3)
    del model
    gc.collect()


def report_modes(name: str, batch_size: int, repeats: int) -> None:
    forward_ms: dict[str, float] = {}
    train_ms: dict[str, float] = {}
    for mode_name, mode in MODES.items():
        log.info("%s %s: timing forward and training steps at B=%d", name, mode_name, batch_size)
        forward_ms[mode_name], train_ms[mode_name] = mode_ms_per_image(name, mode, batch_size, repeats)
        gc.collect()
        emit(f"{name}_{mode_name}_fwd_ms_per_img", forward_ms[mode_name], 3)
        emit(f"{name}_{mode_name}_train_ms_per_img", train_ms[mode_name], 3)

    best_train_mode = min(train_ms, key=train_ms.get)
    best_forward_mode = min(forward_ms, key=forward_ms.get)
    emit(f"{name}_best_train_speedup_vs_{BASELINE_MODE}", train_ms[BASELINE_MODE] / train_ms[best_train_mode], 2)
    emit(f"{name}_best_fwd_speedup_vs_{BASELINE_MODE}", forward_ms[BASELINE_MODE] / forward_ms[best_forward_mode], 2)
    emit(f"{name}_best_train_mode", best_train_mode)


def report_insightface_ops(name: str, batch_size: int, repeats: int) -> None:
    mode = MODES[COMPARISON_MODE]
    log.info("%s %s: timing ours and insightface ops alternately", name, COMPARISON_MODE)
    faces = random_faces(batch_size, mode)
    models = {"ours": build_model(name, mode), "insightface_ops": build_model(name, mode, insightface_ops=True)}
    steps = {key: functools.partial(training_step, model.train(), faces, mode) for key, model in models.items()}
    times = alternating_step_ms(steps, repeats)
    del steps, models
    gc.collect()

    for key, key_times in times.items():
        log.info("%s %s train step times (ms): %s", name, key, " ".join(f"{t:.1f}" for t in key_times))
    emit(
        f"{name}_insightface_ops_{COMPARISON_MODE}_train_ms_per_img",
        statistics.median(times["insightface_ops"]) / batch_size,
        3,
    )
    # Median of the ratios of adjacent steps: load that comes and goes on this shared machine
    # shifts both steps of a pair alike, where it could shift the two medians apart.
    pair_ratios = [ours / theirs for ours, theirs in zip(times["ours"], times["insightface_ops"])]
    emit(f"{name}_ours_vs_insightface_ops_train", statistics.median(pair_ratios), 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = list_backbones()
    parser.add_argument(
        "--models",
        nargs="+",
        choices=names,
        default=names,
        metavar="NAME",
        help=f"backbones to benchmark, of {', '.join(names)} (default: all)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="faces per step (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help="timed steps per measurement, median taken (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (BatchNorm in training mode needs two samples)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    emit("allocator_tuned", int(tune_cpu_allocator()))
    torch.set_num_threads(NUM_THREADS)

    for name in args.models:
        report_size(name)
        report_modes(name, args.batch_size, args.repeats)
        if name in IRESNET_NAMES:
            report_insightface_ops(name, args.batch_size, args.repeats)
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
