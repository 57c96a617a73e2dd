"""``arcface embed | verify | search | gallery build``: a model on photos."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from . import CommandError

__all__ = ["register"]

log = logging.getLogger(__name__)


def _recognizer(args: argparse.Namespace, first_photo: str | None):
    from ..recognizer import FaceRecognizer
    from .eval import _device, find_detector

    return FaceRecognizer.load(
        args.model, arch=args.arch, input_mean=args.input_mean, input_std=args.input_std, input_layout=args.input_layout,
        bgr=args.bgr, detector=find_detector(args.detector, Path(first_photo).parent if first_photo else None),
        threshold=getattr(args, "threshold", None), device=_device(args.device),
    )


def _aligned(args: argparse.Namespace) -> bool | None:
    return True if args.aligned else None


def _embed(args: argparse.Namespace) -> int:
    recognizer = _recognizer(args, args.photos[0])
    result = recognizer.embed(args.photos, _aligned(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, result.embeddings)
    status = {photo: state for photo, state in zip(args.photos, result.status)}
    out.with_suffix(".json").write_text(json.dumps({"model": recognizer.info.to_dict(), "status": status}, indent=2) + "\n")
    failed = int((~result.ok).sum())
    log.info("%d of %d photos embedded -> %s (status per photo in %s)", len(args.photos) - failed, len(args.photos), out, out.with_suffix(".json"))
    return 0 if failed == 0 else 1


def _verify(args: argparse.Namespace) -> int:
    recognizer = _recognizer(args, args.a)
    score, same = recognizer.verify(args.a, args.b, _aligned(args))
    sys.stdout.write(f"{score:.4f} {'same' if same else 'different'} (threshold {recognizer.threshold:.4f})\n")
    return 0


def _gallery_build(args: argparse.Namespace) -> int:
    from ..recognizer import Gallery

    recognizer = _recognizer(args, str(Path(args.folder) / "photo"))  # the detector is searched from the folder up
    gallery = Gallery.build(recognizer, args.folder, _aligned(args))
    gallery.save(args.out)
    log.info("gallery of %d photos of %d identities -> %s", len(gallery.names), len(set(gallery.names)), args.out)
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..recognizer import Gallery

    gallery = Gallery.load(args.gallery)
    recognizer = _recognizer(args, args.photo)
    if recognizer.info.embedding_size != gallery.embeddings.shape[1]:
        raise CommandError(f"the gallery holds {gallery.embeddings.shape[1]}-D embeddings; this model gives {recognizer.info.embedding_size}-D")
    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    for rank, (name, score) in enumerate(recognizer.search(args.photo, gallery, args.k, _aligned(args)), start=1):
        sys.stdout.write(f"{rank}\t{name}\t{score:.4f}\n")
    return 0


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint .pt / run folder, insightface .pth (--arch), or .onnx")
    parser.add_argument("--arch", help="backbone of an insightface .pth")
    parser.add_argument("--input-mean", type=float, help="ONNX: pixel mean (default 127.5)")
    parser.add_argument("--input-std", type=float, help="ONNX: pixel divisor (default 127.5; many models use 128)")
    parser.add_argument("--input-layout", default="auto", choices=["auto", "nchw", "nhwc"])
    parser.add_argument("--bgr", action="store_const", const=True, default=None,
                        help="ONNX: the model expects BGR (default: what the file says, else RGB)")
    parser.add_argument("--detector", help="YuNet .onnx (default $ARCFACE_DETECTOR or models/yunet/*.onnx above the photos)")
    parser.add_argument("--aligned", action="store_true", help="the photos are aligned 112x112 faces: no detection")
    parser.add_argument("--device", default="auto")


def register(verbs: argparse._SubParsersAction) -> None:
    embed = verbs.add_parser("embed", help="embed photos: OUT.npy (N, D), NaN rows for photos without a usable face, OUT.json statuses")
    embed.add_argument("photos", nargs="+")
    embed.add_argument("--out", required=True, help="output .npy")
    _model_arguments(embed)
    embed.set_defaults(handler=_embed)

    verify = verbs.add_parser("verify", help="are two photos the same person? prints the cosine and same/different")
    verify.add_argument("a")
    verify.add_argument("b")
    verify.add_argument("--threshold", type=float, help="cosine above which the answer is same (default: the model's report, else 0.3)")
    _model_arguments(verify)
    verify.set_defaults(handler=_verify)

    search = verbs.add_parser("search", help="the k gallery identities nearest a photo")
    search.add_argument("photo")
    search.add_argument("--gallery", required=True, help="gallery .npz from `arcface gallery build`")
    search.add_argument("-k", type=int, default=5)
    _model_arguments(search)
    search.set_defaults(handler=_search)

    gallery = verbs.add_parser("gallery", help="build a gallery of known people for `arcface search`")
    gallery.set_defaults(verb_parser=gallery)
    actions = gallery.add_subparsers(dest="action", metavar="ACTION")
    build = actions.add_parser("build", help="embed DIR/<identity>/<photo> into a gallery .npz")
    build.add_argument("folder")
    build.add_argument("--out", required=True, help="output .npz")
    _model_arguments(build)
    build.set_defaults(handler=_gallery_build)
