"""Inference speed (PyTorch bf16 vs onnxruntime fp32) and gallery search recall on all LFW faces.

Run from the repository root (CPU; several minutes)::

    .venv/bin/python benchmarks/inference.py --lfw ../shared/data/lfw_deepfunneled \\
        --aligned runs/cache/lfw_aligned --detector ../shared/data/models/yunet/face_detection_yunet_2026may.onnx \\
        --checkpoint runs/lfw_full --judge ../shared/data/models/mobilefacenet_onnx/mobilefacenet.onnx

Printed, one figure a line:

* ``<model>_<runtime>_photo_latency_ms``: one 250x250 LFW photo through read + YuNet + align +
  flip-test embedding (median of ``--photos`` single calls), for iresnet50 and mobilefacenet
  (weights do not change the time), PyTorch bf16 autocast vs the same model exported to ONNX fp32.
* ``<model>_<runtime>_aligned_images_per_s``: aligned 112x112 faces, batches of 64, flip-test.
* ``search_<model>_rank1_pct``: every LFW person with at least 2 photos queries with photo 1 against
  a gallery of all the other 13,233 - Q faces (5,749 people, the single-photo people as distractors);
  rank-1 = the nearest identity is the right one. For the checkpoint (``--checkpoint``) and the
  independent MobileFaceNet (``--judge``), through the same FaceRecognizer API, from the aligned images.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arcface import FaceRecognizer, Gallery
from arcface.backbones import create_backbone
from arcface.model import ModelInfo, load_face_model
from arcface.export import export_onnx

log = logging.getLogger("benchmarks.inference")


def emit(key: str, value) -> None:
    print(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}", flush=True)


class _Bf16(torch.nn.Module):
    """A backbone run under bf16 autocast with channels_last inputs (our CPU inference mode)."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone.to(memory_format=torch.channels_last).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.backbone(images.contiguous(memory_format=torch.channels_last)).float()


def speed(name: str, photos: list[Path], detector: str, count: int, work: Path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    onnx_path = work / f"{name}.onnx"
    export_onnx(backbone, onnx_path, check_batches=(1,), tolerance=float("inf"))  # speed only: untrained weights
    info = ModelInfo(str(onnx_path), "checkpoint", name, 512)
    onnx_model, onnx_info = load_face_model(onnx_path)
    runtimes = {"pytorch_bf16": FaceRecognizer(_Bf16(backbone), info, detector=detector),
                "onnxruntime_fp32": FaceRecognizer(onnx_model, onnx_info, detector=detector)}
    aligned = torch.rand(64, 3, 112, 112) * 2 - 1
    for runtime, recognizer in runtimes.items():
        recognizer.embed([str(photos[0])])  # warm-up (detector, first forward)
        times = []
        for photo in photos[:count]:
            start = time.perf_counter()
            recognizer.embed([str(photo)])
            times.append(time.perf_counter() - start)
        emit(f"{name}_{runtime}_photo_latency_ms", 1000 * statistics.median(times))
        from arcface.eval import embed_images

        embed_images(recognizer.model, aligned[:8])
        start, done = time.perf_counter(), 0
        while done < 128 or time.perf_counter() - start < 5:
            embed_images(recognizer.model, aligned, batch_size=64)
            done += 64
        emit(f"{name}_{runtime}_aligned_images_per_s", done / (time.perf_counter() - start))


def search_recall(label: str, recognizer: FaceRecognizer, aligned: Path) -> None:
    people = sorted(p for p in aligned.iterdir() if p.is_dir())
    queries, query_names, gallery_paths, gallery_names = [], [], [], []
    for person in people:
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2:
            queries.append(str(photos[0]))
            query_names.append(person.name)
            photos = photos[1:]
        gallery_paths += [str(p) for p in photos]
        gallery_names += [person.name] * len(photos)
    start = time.perf_counter()
    gallery_embeddings = recognizer.embed(gallery_paths, aligned=True).embeddings
    query_embeddings = recognizer.embed(queries, aligned=True).embeddings
    gallery = Gallery(gallery_names, gallery_embeddings, gallery_paths)
    found = gallery.search(query_embeddings, k=1)
    recall = np.mean([result[0][0] == name for result, name in zip(found, query_names)])
    emit(f"search_{label}_queries", len(queries))
    emit(f"search_{label}_gallery_faces", len(gallery_paths))
    emit(f"search_{label}_rank1_pct", 100 * float(recall))
    emit(f"search_{label}_seconds", time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder (images/)")
    parser.add_argument("--aligned", type=Path, required=True, help="aligned LFW (runs/cache/lfw_aligned)")
    parser.add_argument("--detector", required=True)
    parser.add_argument("--checkpoint", help="our trained model for the search figure")
    parser.add_argument("--judge", help="independent ONNX model for the search figure ((x-127.5)/128)")
    parser.add_argument("--models", nargs="*", default=["iresnet50", "mobilefacenet"])
    parser.add_argument("--photos", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(2)
    photos = sorted((args.lfw / "images").glob("*/*_0001.jpg"))[: args.photos + 1]
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            speed(name, photos, args.detector, args.photos, Path(work))
    if args.checkpoint:
        search_recall("checkpoint", FaceRecognizer.load(args.checkpoint), args.aligned)
    if args.judge:
        search_recall("mobilefacenet_onnx", FaceRecognizer.from_onnx(args.judge, input_std=128.0), args.aligned)
    return 0


if __name__ == "__main__":
    sys.exit(main())
