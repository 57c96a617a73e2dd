"""Data pipeline throughput: face alignment on LFW, and the training loader against what a model consumes.

Run from the repository root (about 3 minutes on a 2-core CPU for the full LFW)::

    .venv/bin/python benchmarks/data.py
    .venv/bin/python benchmarks/data.py --limit 500 --batches 10    # a quick look

What is measured, in one run:

* Alignment: ``arcface data align`` (YuNet through OpenCV, 5-point similarity warp to 112x112,
  JPEG quality 95, 2 processes) over the LFW deep-funneled images: images/s, faces found.
  Target: a face in at least 99.5% of LFW images.
* Loader: a ``DataLoader`` with 2 workers, batch 128, random sampling, decoding the aligned 112x112 JPEGs
  with random flip and normalization, from the RecordIO file ``arcface data pack`` made of them and
  from the aligned folder: images/s over ``--batches`` batches after one warm-up batch.
* Consumption: images/s of an IResNet-50 bf16 channels_last training step (forward + backward,
  batch 32, 2 threads), the fastest mode of ``benchmarks/backbones.py``. Target: the loader delivers
  at least 3x that, so data is never the bottleneck.

Output: one figure per line on stdout, ``key=value``; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from arcface.backbones import create_backbone
from arcface.data.align_job import AlignOptions, align_folder, list_images
from arcface.data.datasets import build_dataset
from arcface.data.pack import pack_folder
from arcface.runtime import tune_cpu_allocator

log = logging.getLogger("benchmarks.data")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW = REPO.parent / "shared/data/lfw_deepfunneled/images"
DEFAULT_DETECTOR = REPO.parent / "shared/data/models/yunet/face_detection_yunet_2026may.onnx"
LOADER_BATCH = 128
MODEL_BATCH = 32


def emit(key: str, value, decimals: int = 1) -> None:
    text = f"{value:.{decimals}f}" if isinstance(value, float) else str(value)
    print(f"{key}={text}", flush=True)


def subset(source: Path, limit: int | None, work: Path) -> Path:
    """The source folder, or a folder of symlinks to its first ``limit`` images."""
    if limit is None:
        return source
    linked = work / "lfw_subset"
    for relative in list_images(source)[:limit]:
        (linked / relative).parent.mkdir(parents=True, exist_ok=True)
        (linked / relative).symlink_to(source / relative)
    return linked


def measure_alignment(source: Path, detector: Path, work: Path) -> Path:
    aligned = work / "aligned"
    report = align_folder(source, aligned, AlignOptions(detector=str(detector), workers=2))
    emit("align_images", report["images"])
    emit("align_faces_found", report["faces_found"])
    emit("align_face_found_percent", 100.0 * report["face_found_rate"], 2)
    emit("align_no_face", len(report["no_face"]))
    emit("align_multiple_faces", len(report["multiple_faces"]))
    emit("align_images_per_s", report["images_per_second_this_run"])
    return aligned


def loader_images_per_s(source: Path, batches: int) -> float:
    dataset = build_dataset(source)
    # Sampling with replacement gives as many batches as asked, however small the dataset.
    sampler = RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * LOADER_BATCH)
    loader = DataLoader(dataset, batch_size=LOADER_BATCH, sampler=sampler, num_workers=2)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first batch
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch, _ = next(iterator)
        images += batch.shape[0]
    return images / (time.perf_counter() - start)


def model_images_per_s(steps: int = 2) -> float:
    torch.set_num_threads(2)
    model = create_backbone("iresnet50").train().to(memory_format=torch.channels_last)
    faces = torch.randn(MODEL_BATCH, 3, 112, 112).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeddings = model(faces)
        embeddings.float().sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * MODEL_BATCH / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW images folder (default: ../shared)")
    parser.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="YuNet ONNX model")
    parser.add_argument("--limit", type=int, help="align only the first N images")
    parser.add_argument("--batches", type=int, default=30, help="timed loader batches of 128 (default 30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if not args.lfw.is_dir():
        parser.error(f"{args.lfw}: LFW images folder not found (pass --lfw)")
    emit("allocator_tuned", int(tune_cpu_allocator()))
    with tempfile.TemporaryDirectory(prefix="arcface_bench_data_") as scratch:
        work = Path(scratch)
        aligned = measure_alignment(subset(args.lfw, args.limit, work), args.detector, work)
        record = work / "aligned.rec"
        pack_folder(aligned, record)
        rates = {"rec": loader_images_per_s(record, args.batches), "folder": loader_images_per_s(aligned, args.batches)}
    consumed = model_images_per_s()
    emit("iresnet50_bf16_train_images_per_s", consumed, 2)
    for name, rate in rates.items():
        emit(f"loader_{name}_images_per_s", rate)
        emit(f"loader_{name}_vs_iresnet50_consumption", rate / consumed, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
