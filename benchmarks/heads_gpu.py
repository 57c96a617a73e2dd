"""The margin head at GPU scale: time and peak memory against a plain fp16 Linear + cross-entropy.

Run from the repository root on a machine with one GPU (a few minutes on one H200)::

    PYTHONPATH=src python3 benchmarks/heads_gpu.py
    PYTHONPATH=src python3 benchmarks/heads_gpu.py --dry-run-on-cpu    # tiny sizes, on the CPU, seconds

What it measures, in one process, for a global batch of B = 1024 embeddings (8 GPUs x 128 gathered)
of size D = 512 on random inputs, forward + backward of the head alone (parameter gradients set to
None before each step, no optimizer), timed in interleaved rounds (every variant once per round),
medians over the rounds:

* ``plain_fp16``: ``F.linear`` under fp16 autocast + ``F.cross_entropy`` (no normalization, no
  margin), the speed limit of a classifier this size.
* ours, ``create_head("arcface", ...)``: ``fp16`` and ``bf16`` (the cosine product in the autocast
  dtype, ``cosine_precision="autocast"``, which is what ``"auto"`` does on CUDA) and ``fp32``
  (``cosine_precision="float32"`` under fp16 autocast: float32 cosines), each with the default
  ``class_chunk``, for C in {1e5, 1e6} and sample_rate in {1.0, 0.1} (partial FC).
* the chunk size: ours in fp16 at C = 1e6 with ``class_chunk`` 4096, 16384, 65536 and 0 (one chunk
  kept for backward), to choose the CUDA default.
* accuracy: ours in fp16 and bf16 against the same head in float64 (loss, embedding and center
  gradients, norm-wise relative error), C = 1e5.
* one full training step of IResNet-50 (channels_last) + ours at C = 1e6, sample_rate 0.1, batch 128
  on one GPU, SGD, fp16 autocast + GradScaler and bf16 autocast: images per second.

Peak memory is ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated just
before it (inputs, centers and the other variants' tensors excluded; the step's weight gradient,
C x D float32, included). MB means MiB. Targets (issue 34): ours at most 1.5x the plain fp16 time at
C = 1e5 and 1e6 (sample_rate 1.0), at most the plain fp16 peak memory, and at C = 1e6 sample_rate 0.1
at most 0.3x its own sample_rate 1.0 time.

Output: one figure per line on stdout, ``key=value``; diagnostics on stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from arcface.backbones import create_backbone
from arcface.heads import create_head
from arcface.heads.margin_loss import DEFAULT_CLASS_CHUNK, float32_output_supported

log = logging.getLogger("benchmarks.heads_gpu")


@dataclass(frozen=True)
class Sizes:
    """Everything that the dry run shrinks."""

    batch: int = 1024
    dim: int = 512
    classes: tuple[int, ...] = (100_000, 1_000_000)
    chunks: tuple[int, ...] = (4096, 16384, 65536, 0)
    accuracy_classes: int = 100_000
    full_batch: int = 128
    full_classes: int = 1_000_000
    backbone: str = "iresnet50"
    warmup: int = 3
    repeats: int = 10
    full_repeats: int = 8


GPU = Sizes()
DRY_RUN = Sizes(
    batch=32, dim=32, classes=(2_000, 20_000), chunks=(512, 4096, 0), accuracy_classes=2_000,
    full_batch=2, full_classes=20_000, backbone="iresnet18", warmup=1, repeats=2, full_repeats=1,
)
SAMPLE_RATES = (1.0, 0.1)
MIB = 2**20


def emit(key: str, value) -> None:
    print(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}", flush=True)


class Timer:
    """Wall time of a step, the device drained before and after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, step: Callable[[], None]) -> float:
        self.sync()
        start = time.perf_counter()
        step()
        self.sync()
        return (time.perf_counter() - start) * 1e3


def peak_step_mb(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory the step adds over what is allocated before it (nan on the CPU)."""
    if device.type != "cuda":
        step()
        return math.nan
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


def interleaved_ms(steps: dict[str, Callable[[], None]], timer: Timer, sizes: Sizes) -> dict[str, float]:
    """Median step time of each variant over rounds in which every variant runs once."""
    for step in steps.values():
        for _ in range(sizes.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(sizes.repeats):
        for name, step in steps.items():
            times[name].append(timer(step))
    for name, values in times.items():
        log.info("%s: %s ms", name, " ".join(f"{v:.2f}" for v in values))
    return {name: statistics.median(values) for name, values in times.items()}


def head_step(head, embeddings, labels, autocast: torch.dtype | None) -> Callable[[], None]:
    def step() -> None:
        for param in head.parameters():
            param.grad = None
        embeddings.grad = None
        with torch.autocast(embeddings.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = head(embeddings, labels)
        loss.backward()

    return step


def plain_step(weight, embeddings, labels) -> Callable[[], None]:
    def step() -> None:
        weight.grad = None
        embeddings.grad = None
        with torch.autocast(embeddings.device.type, dtype=torch.float16):
            logits = F.linear(embeddings, weight)
            loss = F.cross_entropy(logits, labels)
        loss.backward()

    return step


_HEADS: dict[int, dict[float, torch.nn.Module]] = {}


def build_heads(classes: int, sizes: Sizes, device: torch.device) -> dict[float, torch.nn.Module]:
    """The sample_rate 1.0 head and the partial FC (0.1) head, sharing one set of centers; built
    once per C (the partial FC head draws its seeded centers on the host, seconds at C = 1e6)."""
    if classes not in _HEADS:
        with device:  # the plain head draws its centers on the device
            full = create_head("arcface", num_classes=classes, embedding_size=sizes.dim)
        sampled = create_head("arcface", num_classes=classes, embedding_size=sizes.dim, sample_rate=0.1, seed=0)
        sampled.weight = full.weight  # the host copy is dropped before the move
        _HEADS[classes] = {1.0: full, 0.1: sampled.to(device)}
    return _HEADS[classes]


def bench_classes(classes: int, sizes: Sizes, device: torch.device, timer: Timer) -> dict[str, float]:
    generator = torch.Generator(device=device).manual_seed(classes)
    embeddings = torch.randn(sizes.batch, sizes.dim, device=device, generator=generator).requires_grad_(True)
    labels = torch.randint(0, classes, (sizes.batch,), device=device, generator=generator)
    heads = build_heads(classes, sizes, device)
    plain_weight = heads[1.0].weight.detach().clone().requires_grad_(True)
    # "autocast" is what "auto" means on CUDA; on the CPU dry run it still exercises the half path.
    modes = {"fp16": (torch.float16, "autocast"), "bf16": (torch.bfloat16, "autocast"), "fp32": (torch.float16, "float32")}
    steps: dict[str, Callable[[], None]] = {"plain_fp16": plain_step(plain_weight, embeddings, labels)}
    chunks: dict[str, int | None] = {}
    for rate, head in heads.items():
        for mode, (dtype, precision) in modes.items():
            name = f"ours_{mode}_sr{rate:g}"
            steps[name] = _configured(head, precision, None, head_step(head, embeddings, labels, dtype))
    if classes == max(sizes.classes):
        for chunk in sizes.chunks:
            name = f"ours_fp16_sr1_chunk{chunk}"
            chunks[name] = chunk
            steps[name] = _configured(heads[1.0], "autocast", chunk, head_step(heads[1.0], embeddings, labels, torch.float16))
    times = interleaved_ms(steps, timer, sizes)
    results: dict[str, float] = {}
    for name, step in steps.items():
        results[f"{name}_C{classes}_ms"] = times[name]
        results[f"{name}_C{classes}_peak_mb"] = peak_step_mb(step, device)
    for name in steps:
        if name != "plain_fp16":
            results[f"{name}_C{classes}_vs_plain_time"] = times[name] / times["plain_fp16"]
    del plain_weight, steps
    return results


def _configured(head, precision: str, chunk: int | None, step: Callable[[], None]) -> Callable[[], None]:
    """The step with the head's loss options set for it (one head serves several variants)."""

    def run() -> None:
        head.cosine_precision, head.class_chunk = precision, chunk
        step()

    return run


def accuracy(sizes: Sizes, device: torch.device) -> None:
    """Ours in fp16 / bf16 against the same head in float64: loss and gradients."""
    classes = sizes.accuracy_classes
    generator = torch.Generator(device=device).manual_seed(1)
    with device:
        head = create_head("arcface", num_classes=classes, embedding_size=sizes.dim, cosine_precision="autocast")
    # Realistic norms: embeddings and centers of norms 1 to 300.
    norms = torch.exp(torch.rand(classes, 1, device=device, generator=generator) * math.log(300.0))
    with torch.no_grad():
        head.weight.copy_(F.normalize(head.weight, dim=1) * norms)
    embeddings = torch.randn(sizes.batch, sizes.dim, device=device, generator=generator)
    embeddings = embeddings * torch.exp(torch.rand(sizes.batch, 1, device=device, generator=generator) * math.log(300.0))
    labels = torch.randint(0, classes, (sizes.batch,), device=device, generator=generator)

    def run(dtype: torch.dtype | None, double: bool = False):
        x = embeddings.double() if double else embeddings
        x = x.clone().requires_grad_(True)
        weight = head.weight.detach().double() if double else head.weight.detach()
        weight = weight.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.func.functional_call(head, {"weight": weight}, (x, labels))
        loss.backward()
        return loss.detach().double(), x.grad.double(), weight.grad.double()

    reference = run(None, double=True)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        got = run(dtype)
        for part, a, b in zip(("loss", "grad_x", "grad_w"), got, reference):
            emit(f"accuracy_{name}_C{classes}_{part}_rel", ((a - b).norm() / b.norm()).item())


def full_step(sizes: Sizes, device: torch.device, timer: Timer) -> None:
    """IResNet-50 (channels_last; IResNet-18 in the dry run) + ours at sample_rate 0.1: training
    images per second."""
    torch.backends.cudnn.benchmark = True
    backbone = create_backbone(sizes.backbone, embedding_size=sizes.dim).to(device).to(memory_format=torch.channels_last).train()
    heads = build_heads(sizes.full_classes, sizes, device)
    head = heads[0.1]
    head.cosine_precision, head.class_chunk = "autocast", None
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(sizes.full_batch, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, sizes.full_classes, (sizes.full_batch,), device=device)
    modes = {"bf16": torch.bfloat16} if device.type != "cuda" else {"fp16": torch.float16, "bf16": torch.bfloat16}
    steps = {}
    for mode, dtype in modes.items():
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        def step(dtype=dtype, scaler=scaler) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = head(backbone(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        steps[mode] = step
    times = interleaved_ms(steps, timer, Sizes(warmup=sizes.warmup, repeats=sizes.full_repeats))
    for mode, ms in times.items():
        key = f"{sizes.backbone}_arcface_C{sizes.full_classes}_sr0.1_{mode}"
        emit(f"{key}_step_ms", ms)
        emit(f"{key}_images_per_s", sizes.full_batch / ms * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="tiny sizes on the CPU: checks the script, not the GPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run_on_cpu:
        device, sizes = torch.device("cpu"), DRY_RUN
        torch.set_num_threads(2)
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda"), GPU
    else:
        print("error: no GPU found; run with --dry-run-on-cpu to check the script on the CPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    emit("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)")
    emit("torch", torch.__version__)
    emit("batch", sizes.batch)
    emit("embedding_size", sizes.dim)
    emit("mm_float32_output_from_half", float32_output_supported(device.type))
    emit("default_class_chunk", DEFAULT_CLASS_CHUNK.get(device.type, 0))
    start = time.perf_counter()
    timer = Timer(device)
    results: dict[str, float] = {}
    for classes in sizes.classes:
        results.update(bench_classes(classes, sizes, device, timer))
        if classes != sizes.full_classes:
            _HEADS.pop(classes, None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for key, value in results.items():
        emit(key, value)
    for classes in sizes.classes:
        ratio = results[f"ours_fp16_sr1_C{classes}_vs_plain_time"]
        emit(f"target_time_C{classes}_fp16_at_most_1.5x_plain", ratio <= 1.5)
        emit(f"target_memory_C{classes}_fp16_at_most_plain",
             results[f"ours_fp16_sr1_C{classes}_peak_mb"] <= results[f"plain_fp16_C{classes}_peak_mb"])
    largest = max(sizes.classes)
    sampled = results[f"ours_fp16_sr0.1_C{largest}_ms"] / results[f"ours_fp16_sr1_C{largest}_ms"]
    emit(f"ours_fp16_C{largest}_sr0.1_vs_sr1_time", sampled)
    emit(f"target_sampled_C{largest}_at_most_0.3x", sampled <= 0.3)
    chunk_times = {chunk: results[f"ours_fp16_sr1_chunk{chunk}_C{largest}_ms"] for chunk in sizes.chunks}
    emit("fastest_class_chunk", min(chunk_times, key=chunk_times.get))
    accuracy(sizes, device)
    full_step(sizes, device, timer)
    emit("benchmark_seconds", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
