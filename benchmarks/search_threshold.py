"""Open-set search with a threshold: are unknown people rejected, are known people found?

The MobileFaceNet ONNX model is registered as a local model entry (input (x - 127.5) / 128, RGB,
NCHW) in a model home of its own, then used by name through ``FaceRecognizer.from_pretrained``,
as ``arcface search --model NAME`` does. Gallery: ``--known`` LFW people with at least two photos,
one photo each (photo 1, detected and aligned with YuNet). Probes: up to ``--probes-per-person``
other photos of each of them (knowns), and photo 1 of ``--unknown`` other LFW people (unknowns).
A probe is answered with the nearest gallery identity when its cosine is above the threshold, else
"unknown" (:func:`arcface.recognizer.answer_of`, the rule of ``arcface search``).

Run from the repository root (CPU; about a minute)::

    .venv/bin/python benchmarks/search_threshold.py --lfw ../shared/data/lfw_deepfunneled \\
        --model ../shared/data/models/mobilefacenet_onnx/mobilefacenet.onnx --input-std 128

Printed, one figure a line: ``unknown_rejected`` (share of unknown probes answered unknown),
``known_found`` (share of known probes answered with the right name: rank-1 correct and above the
threshold), ``known_rank1`` (rank-1 correct whatever the score), at ``threshold`` (``--threshold``,
default the registered entry's, else the library default 0.3), then the same two shares for a sweep
of thresholds (``t0.20_known_found=...``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arcface import FaceRecognizer, Gallery
from arcface.home import find_detector, find_lfw
from arcface.pretrained import ModelEntry, add_local_model
from arcface.recognizer import DEFAULT_THRESHOLD, answer_of

log = logging.getLogger("benchmarks.search_threshold")
SWEEP = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


def emit(key: str, value) -> None:
    print(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}", flush=True)


def choose_people(images: Path, known: int, unknown: int, seed: int) -> tuple[list[str], list[str]]:
    """``known`` people with >= 2 photos and ``unknown`` others, drawn with a fixed seed."""
    people = sorted(p.name for p in images.iterdir() if p.is_dir())
    counts = {name: sum(1 for _ in (images / name).glob("*.jpg")) for name in people}
    several = [name for name in people if counts[name] >= 2]
    rng = np.random.default_rng(seed)
    chosen = [several[i] for i in sorted(rng.choice(len(several), known, replace=False))]
    rest = [name for name in people if name not in set(chosen)]
    others = [rest[i] for i in sorted(rng.choice(len(rest), unknown, replace=False))]
    return chosen, others


def shares(answers: list[str | None], truth: list[str | None]) -> tuple[float, float]:
    """(known found, unknown rejected) for answers against the truth (None: not in the gallery)."""
    known = [a == t for a, t in zip(answers, truth) if t is not None]
    rejected = [a is None for a, t in zip(answers, truth) if t is None]
    return float(np.mean(known)), float(np.mean(rejected))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", help="LFW folder (default: the lookup of `arcface lfw`)")
    parser.add_argument("--model", required=True, help="the ONNX model file to register")
    parser.add_argument("--input-mean", type=float, default=127.5)
    parser.add_argument("--input-std", type=float, default=127.5)
    parser.add_argument("--threshold", type=float, help=f"registered as the entry's threshold (default: none, so {DEFAULT_THRESHOLD})")
    parser.add_argument("--detector", help="YuNet .onnx (default: the lookup near the LFW folder)")
    parser.add_argument("--known", type=int, default=100)
    parser.add_argument("--unknown", type=int, default=50)
    parser.add_argument("--probes-per-person", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    lfw = find_lfw(args.lfw)
    images = lfw / "images"
    detector = find_detector(args.detector, lfw, required=True)
    known, unknown = choose_people(images, args.known, args.unknown, args.seed)
    gallery_photos = [images / name / f"{name}_0001.jpg" for name in known]
    probes, truth = [], []
    for name in known:
        others = sorted((images / name).glob("*.jpg"))[1 : 1 + args.probes_per_person]
        probes += others
        truth += [name] * len(others)
    probes += [images / name / f"{name}_0001.jpg" for name in unknown]
    truth += [None] * len(unknown)

    with tempfile.TemporaryDirectory() as home:
        os.environ["ARCFACE_HOME"] = home  # a home of its own: the user's registry is left alone
        entry = add_local_model(ModelEntry(name="mobilefacenet", task="recognition", description="MobileFaceNet ONNX (192-D)",
                                           licence="MIT (as its package declares)", path=args.model, embedding_size=None,
                                           input_mean=args.input_mean, input_std=args.input_std, threshold=args.threshold))
        recognizer = FaceRecognizer.from_pretrained(entry.name, download=False, detector=detector)
        start = time.perf_counter()
        enrolled = recognizer.embed([str(p) for p in gallery_photos], progress=False)
        probe_result = recognizer.embed([str(p) for p in probes], progress=False)
        seconds = time.perf_counter() - start
    names = [name for name, ok in zip(known, enrolled.ok) if ok]
    gallery = Gallery(names, enrolled.embeddings[enrolled.ok])
    usable = np.flatnonzero(probe_result.ok)
    truth = [truth[i] if truth[i] in set(names) or truth[i] is None else "<not enrolled>" for i in usable]
    ranked = gallery.search(probe_result.embeddings[usable], k=1)
    rank1 = [matches[0][0] for matches in ranked]

    emit("model", Path(args.model).name)
    emit("threads", torch.get_num_threads())
    emit("gallery_people", len(names))
    emit("known_probes", sum(t is not None for t in truth))
    emit("unknown_probes", sum(t is None for t in truth))
    emit("probes_without_face", len(probes) - len(usable))
    emit("embed_seconds", seconds)
    threshold = recognizer.threshold
    found, rejected = shares([answer_of(matches, threshold) for matches in ranked], truth)
    emit("threshold", threshold)
    emit("unknown_rejected", rejected)
    emit("known_found", found)
    emit("known_rank1", float(np.mean([r == t for r, t in zip(rank1, truth) if t is not None])))
    for value in SWEEP:
        found, rejected = shares([answer_of(matches, value) for matches in ranked], truth)
        emit(f"t{value:.2f}_unknown_rejected", rejected)
        emit(f"t{value:.2f}_known_found", found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
