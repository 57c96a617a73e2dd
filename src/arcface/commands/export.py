"""``arcface export CHECKPOINT --onnx OUT.onnx``: ONNX export with a parity check against PyTorch."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import CommandError

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..export.onnx import ExportError, export_onnx
    from ..model import load_face_model

    try:
        batches = tuple(int(b) for b in args.check_batches.split(","))
    except ValueError:
        raise CommandError(f"--check-batches expects comma-separated sizes, got {args.check_batches!r}") from None
    model, info = load_face_model(args.checkpoint, architecture=args.arch)
    if info.kind == "onnx":
        raise CommandError(f"{args.checkpoint} is already an ONNX model")
    try:
        report = export_onnx(model, args.onnx, opset=args.opset, check_batches=batches, tolerance=args.tolerance, simplify=args.simplify,
                             spec=info.spec, metadata={"arcface.architecture": info.architecture, "arcface.source": f"{info.kind} {info.fingerprint}",
                                                       "arcface.version": __version__})
    except ExportError as error:
        raise CommandError(f"export failed the parity check, nothing written: {error}") from None
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.write(f"parity: max abs diff {report['max_abs_diff']:.3g} vs PyTorch (batches {', '.join(map(str, report['per_batch']))}); "
                     f"onnxruntime {report['ort_images_per_s']:.1f} images/s at batch 64"
                     + (f"; simplified {report['nodes_before_simplify']} -> {report['nodes']} nodes" if args.simplify else "") + "\n")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("export", help="export a backbone to ONNX (dynamic batch) and check it against PyTorch")
    parser.add_argument("checkpoint", help="arcface checkpoint .pt / run folder, or insightface .pth with --arch")
    parser.add_argument("--onnx", required=True, help="output .onnx path")
    parser.add_argument("--arch", help="backbone of an insightface .pth (r50, r100, mbf, ...)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--check-batches", default="1,7,64", help="batch sizes of the parity check")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed abs difference (fp32)")
    parser.add_argument("--simplify", action="store_true",
                        help="rewrite the graph with onnxruntime's basic optimizations (constant folding, fusions) before the check")
    parser.set_defaults(handler=_run)
