"""The CUDA paths, checked on one GPU in a few minutes: what CI (CPU only) cannot run.

Run from the repository root on a machine with a GPU (no install needed beyond torch, numpy,
opencv, pyyaml, tqdm)::

    PYTHONPATH=src python3 benchmarks/gpu.py

What it checks and prints (``key=value``, one per line; diagnostics on stderr):

* Single-GPU training with no process group (no NCCL): ``configs/smoke.yaml`` on ``device=cuda`` in
  bf16 autocast, fp16 autocast + GradScaler, and fp32; partial FC (sample_rate 0.5) in fp16. For each:
  first and last logged loss, non-finite steps skipped, and whether torch.distributed was touched.
* Resume on GPU: 40 steps straight vs 20 + resume to 40, same seed; the largest weight difference
  (cuDNN is not bit-deterministic, so this is a tolerance, not the CPU's exact equality).
* fp16 safety of the head: ArcFace s=64 m=0.5 on fp16 embeddings of large norm under fp16 autocast;
  the loss and gradient must be finite and match a float64 evaluation.
* Training throughput of iresnet50 + ArcFace (C=10,000, batch 128): plain fp32 NCHW vs bf16 autocast
  + channels_last vs fp16 autocast + GradScaler + channels_last, timed alternately in one process.
* Inference: cosine agreement of bf16 and fp16 flip-test embeddings with fp32 ones (iresnet50).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from arcface.backbones import create_backbone
from arcface.eval import embed_images
from arcface.heads import create_head
from arcface.model import list_checkpoints, load_checkpoint
from arcface.train.config import load_config
from arcface.train.loop import train

log = logging.getLogger("benchmarks.gpu")
DEVICE = "cuda"  # --dry-run-on-cpu sets "cpu" to try the script here before spending GPU time
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def emit(key: str, value) -> None:
    print(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}", flush=True)


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def check_training(root: Path) -> None:
    cases = {
        "bf16": ["precision.autocast=bf16"],
        "fp16": ["precision.autocast=fp16"],
        "fp32": ["precision.autocast=none"],
        "fp16_partial_fc": ["precision.autocast=fp16", "head.sample_rate=0.5"],
    }
    for name, overrides in cases.items():
        if DEVICE == "cpu" and "fp16" in name:
            continue
        run_dir = root / name
        settings = [f"device={DEVICE}", "schedule.max_steps=60", "data.source=synthetic:2048:64", "data.batch_size=64", *overrides]
        start = time.perf_counter()
        summary = train(load_config(SMOKE, settings), run_dir)
        losses = _losses(run_dir)
        emit(f"train_{name}_seconds", time.perf_counter() - start)
        emit(f"train_{name}_first_loss", losses[0])
        emit(f"train_{name}_last_loss", losses[-1])
        emit(f"train_{name}_nonfinite_skipped", summary["nonfinite_skipped"])
        emit(f"train_{name}_process_group_used", torch.distributed.is_available() and torch.distributed.is_initialized())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(list_checkpoints(run_dir)[0])
    return {**{f"backbone.{k}": v for k, v in state["backbone"].items()}, **{f"head.{k}": v for k, v in state["head"].items()}}


def check_resume(root: Path) -> None:
    settings = [f"device={DEVICE}", "precision.autocast=bf16", "schedule.max_steps=40", "checkpoint.every_steps=10"]
    train(load_config(SMOKE, settings), root / "straight")
    train(load_config(SMOKE, [*settings, "schedule.stop_after_steps=20"]), root / "resumed")
    emit("resume_stopped_at_step", load_checkpoint(list_checkpoints(root / "resumed")[0])["step"])
    train(None, root / "resumed", resume=True, overrides=["schedule.stop_after_steps=0"])
    straight, resumed = _weights(root / "straight"), _weights(root / "resumed")
    difference = max((straight[k].float() - resumed[k].float()).abs().max().item() for k in straight if straight[k].is_floating_point())
    scale = max(straight[k].float().abs().max().item() for k in straight if straight[k].is_floating_point())
    emit("resume_max_weight_difference", difference)
    emit("resume_max_weight_magnitude", scale)


def check_fp16_head() -> None:
    torch.manual_seed(0)
    head = create_head("arcface", num_classes=1000, embedding_size=512).cuda()
    for norm in (1.0, 30.0, 300.0):
        embeddings = torch.nn.functional.normalize(torch.randn(256, 512, device="cuda"), dim=1) * norm
        labels = torch.randint(0, 1000, (256,), device="cuda")
        half = embeddings.half().requires_grad_()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = head(half, labels)
        loss.backward()
        reference = head.double()(embeddings.double(), labels).item()
        head.float()
        emit(f"fp16_head_norm{norm:g}_loss", loss.item())
        emit(f"fp16_head_norm{norm:g}_loss_vs_float64", abs(loss.item() - reference))
        emit(f"fp16_head_norm{norm:g}_grad_finite", bool(torch.isfinite(half.grad).all()))


def _step(mode: str, classes: int, batch: int):
    torch.manual_seed(0)
    layout = torch.contiguous_format if mode == "fp32" else torch.channels_last
    backbone = create_backbone("iresnet50").cuda().to(memory_format=layout).train()
    head = create_head("arcface", num_classes=classes, embedding_size=512).cuda()
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    images = torch.randn(batch, 3, 112, 112, device="cuda").contiguous(memory_format=layout)
    labels = torch.randint(0, classes, (batch,), device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            embeddings = backbone(images)
        scaler.scale(head(embeddings, labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def check_throughput(classes: int = 10_000, batch: int = 128, repeats: int = 15) -> None:
    torch.backends.cudnn.benchmark = True
    steps = {mode: _step(mode, classes, batch) for mode in ("fp32", "bf16", "fp16")}
    for step in steps.values():
        for _ in range(3):
            step()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    for _ in range(repeats):
        for mode, step in steps.items():
            start = time.perf_counter()
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            times[mode].append((time.perf_counter() - start) / 5)
    for mode in steps:
        emit(f"iresnet50_train_images_per_s_{mode}", batch / statistics.median(times[mode]))
    for mode in ("bf16", "fp16"):
        emit(f"iresnet50_train_speedup_{mode}_vs_fp32", statistics.median(times["fp32"]) / statistics.median(times[mode]))


def check_inference() -> None:
    torch.manual_seed(0)
    model = create_backbone("iresnet50").cuda()
    images = torch.rand(256, 3, 112, 112) * 2 - 1
    # An untrained network's BatchNorm running statistics (mean 0, variance 1) let activations grow
    # to ~1e26 through 50 blocks in eval mode; estimate real statistics first, as training would.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(images[:128].cuda())
    model.eval()
    reference = embed_images(model, images, batch_size=128)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        embeddings = embed_images(model, images, batch_size=128, autocast_dtype=dtype, channels_last=True)
        emit(f"embed_{name}_min_cosine_vs_fp32", float((embeddings * reference).sum(1).min()))


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    global DEVICE
    checks = ["training", "resume", "fp16_head", "throughput", "inference"]
    if "--only" in sys.argv:
        checks = sys.argv[sys.argv.index("--only") + 1].split(",")
    if "--dry-run-on-cpu" in sys.argv:  # the training paths only, tiny, to catch mistakes cheaply
        DEVICE, checks = "cpu", ["training", "resume"]
    elif not torch.cuda.is_available():
        log.error("no CUDA device: this script checks the GPU paths only (--dry-run-on-cpu to try it here)")
        return 1
    else:
        emit("device", torch.cuda.get_device_name().replace(" ", "_"))
    emit("torch", torch.__version__)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        runs = {"training": lambda: check_training(root / "train"), "resume": lambda: check_resume(root / "resume"),
                "fp16_head": check_fp16_head, "throughput": check_throughput, "inference": check_inference}
        for name in checks:
            try:
                runs[name]()
            except Exception:  # keep going: one broken path must not hide the others' figures
                log.exception("check %s failed", name)
                emit("check_failed", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
