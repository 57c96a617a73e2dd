"""Training throughput of our loop against a plain fp32 eager loop, and partial-FC head memory per process.

Run from the repository root (several minutes on a 2-core CPU)::

    .venv/bin/python benchmarks/train.py
    .venv/bin/python benchmarks/train.py --models iresnet18 --classes 100000 --steps 3
    .venv/bin/python benchmarks/train.py --models iresnet18 --compile --no-memory --steps 12

What is measured, in one run:

* Images/s of a training step (backbone + ArcFace head + SGD step, batch 64, 2 threads, random
  images in memory) for each backbone in ``--models``, in our best CPU mode (bf16 autocast,
  channels_last, our PReLU, the glibc allocator setting that ``arcface train`` applies) and in a plain
  fp32 eager loop of the same model and head (NCHW, torch's PReLU, no autocast), timed alternately
  in the same process; the ratio is the median of per-pair ratios. Target: at least 3x. With
  ``--compile``, also our mode under torch.compile (``model.compile=true``), in the same rounds.
* Head memory per process for C = 1e6 classes (``--classes``), D = 512, global batch 128: the peak
  resident memory a process adds for the PartialFCHead (its centers, their gradient, one forward +
  backward), with 1 process and with 2 gloo processes (each holding half of the centers), for
  sample_rate 1.0 and 0.1. Each figure comes from fresh processes. Target: per-process memory with
  N processes at most 1/N of the single-process figure (+10%).

Output: one figure per line on stdout, ``key=value``; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

from arcface.backbones import create_backbone
from arcface.backbones.prelu import PReLU
from arcface.heads import create_head
from arcface.runtime import tune_cpu_allocator

log = logging.getLogger("benchmarks.train")

BATCH = 64
EMBEDDING = 512
TRAIN_CLASSES = 1184  # the LFW recipe's number of identities
HEAD_BATCH = 128


def emit(key: str, value, decimals: int = 2) -> None:
    print(f"{key}={value:.{decimals}f}" if isinstance(value, float) else f"{key}={value}", flush=True)


# ----------------------------------------------------------------------------- throughput
def _training_step(name: str, best: bool, compiled: bool = False):
    torch.manual_seed(0)
    backbone = create_backbone(name)
    if not best:  # the plain loop: torch's own operators, default layout
        for module in backbone.modules():
            if isinstance(module, PReLU):
                module.__class__ = nn.PReLU
    layout = torch.channels_last if best else torch.contiguous_format
    backbone = backbone.to(memory_format=layout).train()
    forward = torch.compile(backbone) if compiled else backbone  # as `arcface train` with model.compile=true
    head = create_head("arcface", num_classes=TRAIN_CLASSES, embedding_size=EMBEDDING)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(BATCH, 3, 112, 112).contiguous(memory_format=layout)
    labels = torch.randint(0, TRAIN_CLASSES, (BATCH,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=best):
            embeddings = forward(images)
        head(embeddings, labels).backward()
        optimizer.step()

    return step


def measure_throughput(name: str, steps: int, compiled: bool) -> None:
    """Images/s of our mode, the plain fp32 loop and (``compiled``) our mode under torch.compile, timed alternately."""
    modes = {"ours": _training_step(name, best=True), "plain_fp32": _training_step(name, best=False)}
    if compiled:
        modes["ours_compiled"] = _training_step(name, best=True, compiled=True)
    for mode, step in modes.items():  # warm-up (and compilation, not timed)
        start = time.perf_counter()
        step()
        log.info("%s %s first step %.1f s", name, mode, time.perf_counter() - start)
    rounds = []
    for _ in range(steps):
        times = {}
        for mode, step in modes.items():
            start = time.perf_counter()
            step()
            times[mode] = time.perf_counter() - start
        rounds.append(times)
        log.info("%s step: %s", name, ", ".join(f"{mode} {t:.2f} s" for mode, t in times.items()))
    for mode in modes:
        emit(f"{name}_train_images_per_s_{mode}", BATCH / statistics.median(r[mode] for r in rounds))
    emit(f"{name}_train_speedup_vs_plain_fp32", statistics.median(r["plain_fp32"] / r["ours"] for r in rounds))
    if compiled:
        emit(f"{name}_train_speedup_compiled_vs_ours", statistics.median(r["ours"] / r["ours_compiled"] for r in rounds))


# ----------------------------------------------------------------------------- head memory
def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def head_memory_worker(rank: int, world_size: int, classes: int, sample_rate: float, port: int) -> None:
    """Run in a fresh process: print the MiB this rank adds for the head (centers + one step)."""
    import torch.distributed as dist

    from arcface.heads import PartialFCHead

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    local_batch = HEAD_BATCH // world_size
    embeddings = torch.randn(local_batch, EMBEDDING, requires_grad=True)
    labels = torch.randint(0, classes, (local_batch,), generator=torch.Generator().manual_seed(rank))
    baseline = _rss_kib()
    head = PartialFCHead(classes, EMBEDDING, rank=rank, world_size=world_size, sample_rate=sample_rate)
    head(embeddings, labels).backward()
    print(f"MEMORY {(_peak_kib() - baseline) / 1024:.1f}", flush=True)
    if world_size > 1:
        dist.destroy_process_group()


def measure_head_memory(world_size: int, classes: int, sample_rate: float) -> float:
    """Mean over ranks of the MiB each process adds for the head."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    processes = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--head-worker", str(rank), str(world_size), str(classes), str(sample_rate), str(port)],
                         stdout=subprocess.PIPE, text=True, env=env)
        for rank in range(world_size)
    ]
    figures = []
    for process in processes:
        output, _ = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise RuntimeError(f"head memory worker failed ({process.returncode})")
        figures.append(float(re.search(r"MEMORY ([\d.]+)", output).group(1)))
    return sum(figures) / len(figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["iresnet50", "iresnet18"], help="backbones to time")
    parser.add_argument("--steps", type=int, default=4, help="timed rounds (one step of each mode) per backbone")
    parser.add_argument("--compile", action="store_true", help="also time our mode under torch.compile (model.compile=true)")
    parser.add_argument("--no-memory", action="store_true", help="skip the head-memory figures")
    parser.add_argument("--classes", type=int, default=1_000_000, help="classes for the head-memory figures")
    parser.add_argument("--head-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.head_worker:
        rank, world_size, classes, sample_rate, port = args.head_worker
        head_memory_worker(int(rank), int(world_size), int(classes), float(sample_rate), int(port))
        return 0
    torch.set_num_threads(2)
    emit("allocator_tuned", int(tune_cpu_allocator()))
    for name in args.models:
        measure_throughput(name, args.steps, args.compile)
    for sample_rate in () if args.no_memory else (1.0, 0.1):
        single = measure_head_memory(1, args.classes, sample_rate)
        double = measure_head_memory(2, args.classes, sample_rate)
        tag = f"C{args.classes}_rate{sample_rate:g}"
        emit(f"head_mem_mb_per_process_1proc_{tag}", single, 1)
        emit(f"head_mem_mb_per_process_2proc_{tag}", double, 1)
        emit(f"head_mem_2proc_vs_1proc_{tag}", double / single)
    return 0


if __name__ == "__main__":
    sys.exit(main())
