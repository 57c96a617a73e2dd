"""Benchmark our ArcFace margin head against a plain softmax head (CPU, fp32).

Run from the repository root::

    .venv/bin/python benchmarks/heads.py                 # C = 1e3, 1e4, 1e5; 20 timed steps
    .venv/bin/python benchmarks/heads.py --sizes 1000 --repeats 5
    .venv/bin/python benchmarks/heads.py --sizes 100000 --variants   # the CPU defaults' evidence

What is measured, for B = 128 embeddings of size D = 512 and C classes, with two threads:

* Step time: one training step's forward + backward (embeddings with ``requires_grad=True``,
  random labels, parameter gradients set to None before each step, no optimizer). After three
  warm-up steps each, the two heads are timed interleaved (ours, baseline, ours, baseline, ...)
  so that machine noise hits both alike; the times are medians over ``--repeats`` steps, the ratio
  is the median of the per-pair ratios (robust to load that drifts during the run); the ratio of
  the fastest steps is printed too (``..._fastest_time``: robust to load that comes and goes).
* Step memory: the increase of the process's peak resident memory (VmHWM) over one step, measured
  for each (head, C) in a fresh subprocess run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc
  hands large buffers back to the OS and resident memory tracks the live tensors. The worker runs
  one step, drops the gradients, takes the resident memory as the baseline, resets the peak through
  ``/proc/self/clear_refs``, runs a second step and reports peak minus baseline. It includes the
  gradients the step allocates (for the weight, C x D floats). MB here means MiB.

The baseline is ``torch.nn.Linear(D, C)`` followed by ``torch.nn.functional.cross_entropy``;
ours is ``create_head("arcface", num_classes=C, embedding_size=D)`` with its CPU defaults.

``--variants`` also times (and measures) the head's options, to choose its CPU defaults: the cosine
product in float32 or in bf16 (``cosine_precision="autocast"`` under CPU bf16 autocast; the
embeddings stay float32, as a backbone's embedding layer gives them), and ``class_chunk`` 0 (one
chunk kept for backward) or 4096 / 16384 / 65536 classes per recomputed chunk. Keys:
``arcface_{fp32|bf16}_chunk{N}_...``.

Targets, at C = 1e5: ArcFace at most 1.3x the softmax step time and at most 1.5x its step memory.
For reference, insightface's CombinedMarginLoss path measured about 2.9x the time at C = 1e4 and
4.0x at C = 1e5, with about 4x the step memory; pytorch-metric-learning's ArcFaceLoss about 3.2x
and 4.0x.

Output: one figure per line on stdout, ``key=value``; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import statistics
import subprocess
import sys
import time

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from arcface.heads import create_head

log = logging.getLogger("benchmarks.heads")

BATCH_SIZE = 128
EMBEDDING_SIZE = 512
DEFAULT_SIZES = (1_000, 10_000, 100_000)
NUM_THREADS = 2
WARMUP_STEPS = 3
HEAD_NAMES = ("softmax", "arcface")
VARIANT_CHUNKS = (0, 4096, 16384, 65536)
VARIANT_NAMES = tuple(f"arcface_{p}_chunk{c}" for p in ("fp32", "bf16") for c in VARIANT_CHUNKS)
MALLOC_MMAP_THRESHOLD = "65536"
MIB = 2**20


class PlainSoftmaxHead(nn.Module):
    """The baseline: an unnormalized linear layer and cross-entropy."""

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_size, num_classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.linear(embeddings), labels)


def build_head(name: str, num_classes: int) -> nn.Module:
    if name == "arcface":
        return create_head("arcface", num_classes=num_classes, embedding_size=EMBEDDING_SIZE)
    if name == "softmax":
        return PlainSoftmaxHead(num_classes, EMBEDDING_SIZE)
    if name in VARIANT_NAMES:
        _, precision, chunk = name.split("_")
        return create_head(
            "arcface", num_classes=num_classes, embedding_size=EMBEDDING_SIZE, class_chunk=int(chunk[len("chunk"):]),
            cosine_precision="autocast" if precision == "bf16" else "float32",
        )
    raise ValueError(f"unknown head {name!r}; expected one of {HEAD_NAMES + VARIANT_NAMES}")


def step_context(name: str) -> contextlib.AbstractContextManager:
    """bf16 variants run under CPU bf16 autocast (their product follows it); the others without."""
    if "_bf16_" in name:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_inputs(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = torch.randn(BATCH_SIZE, EMBEDDING_SIZE, requires_grad=True)
    labels = torch.randint(0, num_classes, (BATCH_SIZE,))
    return embeddings, labels


def clear_grads(head: nn.Module, embeddings: torch.Tensor) -> None:
    for param in head.parameters():
        param.grad = None
    embeddings.grad = None


def training_step(head: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor, name: str = "") -> None:
    """Forward (under the variant's autocast) + backward, starting from no gradients."""
    clear_grads(head, embeddings)
    with step_context(name):
        loss = head(embeddings, labels)
    loss.backward()


# ----------------------------------------------------------------------------- time


def timed_step_ms(head: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor, name: str) -> float:
    start = time.perf_counter()
    training_step(head, embeddings, labels, name)
    return (time.perf_counter() - start) * 1e3


def step_times_ms(num_classes: int, repeats: int, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Step times of each head, timed in alternation (round i: ours and its variants, then baseline)."""
    setups = {}
    for name in names:
        head = build_head(name, num_classes)
        embeddings, labels = build_inputs(num_classes)
        for _ in range(WARMUP_STEPS):
            training_step(head, embeddings, labels, name)
        setups[name] = (head, embeddings, labels)

    times: dict[str, list[float]] = {name: [] for name in names}
    order = [name for name in names if name != "softmax"] + ["softmax"]
    for _ in range(repeats):
        for name in order:
            times[name].append(timed_step_ms(*setups[name], name))
    for name in names:
        log.info("C=%d %s step times (ms): %s", num_classes, name, " ".join(f"{t:.2f}" for t in times[name]))
    return times


# ----------------------------------------------------------------------------- memory


def resident_bytes() -> int:
    """Current resident set size, from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """Peak resident set size (VmHWM), from /proc/self/status."""
    with open("/proc/self/status") as status:
        match = re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("no VmHWM in /proc/self/status")
    return int(match.group(1)) * 1024


def reset_peak_resident() -> bool:
    """Reset VmHWM to the current RSS; True if the reset took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as error:
        log.warning("cannot reset the peak resident memory: %s", error)
        return False
    slack = 4 * MIB  # reading /proc may itself touch a few pages
    return peak_resident_bytes() <= resident_bytes() + slack


def step_memory_bytes(head_name: str, num_classes: int) -> int:
    """Increase of peak resident memory over one step (run in a fresh process)."""
    head = build_head(head_name, num_classes)
    embeddings, labels = build_inputs(num_classes)
    gc.collect()
    before_first_step = resident_bytes()

    training_step(head, embeddings, labels, head_name)
    clear_grads(head, embeddings)
    gc.collect()
    baseline = resident_bytes()
    if reset_peak_resident():
        training_step(head, embeddings, labels, head_name)
        return peak_resident_bytes() - baseline

    log.warning(
        "VmHWM reset did not work; %s C=%d step memory is the peak since process start minus the "
        "memory before the first step (includes one-time allocations)",
        head_name,
        num_classes,
    )
    return peak_resident_bytes() - before_first_step


def run_memory_worker(head_name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    print(step_memory_bytes(head_name, num_classes))


def measure_step_memory_mb(head_name: str, num_classes: int) -> float:
    """Step memory of one head, from a fresh child process of this script."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-worker", head_name, str(num_classes)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MALLOC_MMAP_THRESHOLD}
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return int(result.stdout.strip()) / MIB


# ----------------------------------------------------------------------------- main


def emit(key: str, value: float, decimals: int) -> None:
    print(f"{key}={value:.{decimals}f}", flush=True)


def benchmark_size(num_classes: int, repeats: int, names: tuple[str, ...]) -> None:
    log.info("C=%d: timing %d interleaved steps per head", num_classes, repeats)
    times = step_times_ms(num_classes, repeats, names)
    emit(f"softmax_time_ms_C{num_classes}", statistics.median(times["softmax"]), 3)
    for name in names[1:]:
        emit(f"{name}_time_ms_C{num_classes}", statistics.median(times[name]), 3)
        # Median of the ratios of adjacent steps: a load that comes and goes on a shared machine
        # shifts both steps of a round alike, where it could shift the two medians apart.
        pair_ratios = [ours / base for ours, base in zip(times[name], times["softmax"])]
        emit(f"{name}_vs_softmax_time_C{num_classes}", statistics.median(pair_ratios), 2)
        # The fastest steps are the least disturbed by other load: their ratio is a second estimate.
        emit(f"{name}_vs_softmax_fastest_time_C{num_classes}", min(times[name]) / min(times["softmax"]), 2)

    log.info("C=%d: measuring step memory in fresh processes", num_classes)
    memory = {name: measure_step_memory_mb(name, num_classes) for name in names}
    emit(f"softmax_step_mem_mb_C{num_classes}", memory["softmax"], 1)
    for name in names[1:]:
        emit(f"{name}_step_mem_mb_C{num_classes}", memory[name], 1)
        emit(f"{name}_vs_softmax_mem_C{num_classes}", memory[name] / memory["softmax"], 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        metavar="C",
        help="numbers of classes to benchmark (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed steps per head, median taken (default: %(default)s)"
    )
    parser.add_argument(
        "--variants", action="store_true",
        help="also time the head's cosine_precision (fp32 / bf16 product) and class_chunk options",
    )
    parser.add_argument("--memory-worker", nargs=2, metavar=("HEAD", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if any(size < 1 for size in args.sizes):
        parser.error("--sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(NUM_THREADS)

    if args.memory_worker is not None:
        head_name, num_classes = args.memory_worker
        run_memory_worker(head_name, int(num_classes))
        return 0

    torch.manual_seed(0)
    names = HEAD_NAMES + (VARIANT_NAMES if args.variants else ())
    for num_classes in args.sizes:
        benchmark_size(num_classes, args.repeats, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
