"""``arcface eval MODEL``: verification (pairs, .bin, IJB) and 1:N identification, with a JSON report."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
from pathlib import Path

from . import CommandError
from .common import (
    add_detector_argument,
    add_device_argument,
    add_model_argument,
    add_model_input_arguments,
    detector_for,
    device,
    load_model,
    progress,
)

__all__ = ["register"]

log = logging.getLogger(__name__)


def _format_summary(report: dict) -> str:
    protocol = report["protocol"]
    if protocol in ("pairs", "bin"):
        tars = ", ".join(f"TAR@FAR={k} {v:.4f}" for k, v in report["tar_at_far"].items() if v is not None)
        return (f"{report['num_folds']}-fold accuracy {100 * report['accuracy']:.2f}% +- {100 * report['accuracy_std']:.2f}% "
                f"(best-threshold {100 * report['best_threshold_accuracy']:.2f}%)"
                + (f", EER {100 * report['eer']:.2f}%, {tars}" if report["eer"] is not None else "") + "; "
                f"{report['num_pairs']} pairs, {report['num_images']} images {report['alignment']}, {report['seconds']:.1f} s")
    if protocol == "ijb":
        tars = ", ".join(f"TAR@FAR={k} {v:.4f}" for k, v in report["tar_at_far"].items() if v is not None)
        return f"{report['name']} 1:1 {tars}; {report['num_pairs']} pairs of {report['num_templates']} templates, {report['seconds']:.1f} s"
    ranks = ", ".join(f"rank-{key[4:]} {100 * value:.2f}%" for key, value in report.items() if key.startswith("rank") and key[4:].isdigit())
    tpir = ", ".join(f"TPIR@FPIR={k} {v:.4f}" for k, v in report["tpir_at_fpir"].items() if v is not None)
    return (f"identification: {ranks}" + (f", {tpir}" if tpir else "")
            + f"; {report['num_mated_probes']} mated + {report['num_non_mated_probes']} non-mated probes, "
            f"gallery {report['gallery_size']} + {report['num_distractors']} distractors, {report['seconds']:.1f} s")


def _run(args: argparse.Namespace) -> int:
    from ..eval.evaluate import EvalOptions, evaluate_bin, evaluate_identification, evaluate_ijb, evaluate_pairs, plot_roc
    from ..home import embedding_cache_dir

    chosen = [name for name, value in (("--pairs", args.pairs), ("--bin", args.bin), ("--ijb", args.ijb), ("--gallery", args.gallery)) if value]
    if len(chosen) != 1:
        raise CommandError("give exactly one protocol: --pairs FILE --images ROOT, --bin FILE, --ijb ROOT, or --gallery DIR --probes DIR"
                           + (f" (got {' and '.join(chosen)})" if chosen else ""))
    if args.pairs and not args.images:
        raise CommandError("--pairs needs --images ROOT (the folder the pairs' image names are relative to)")
    if args.gallery and not args.probes:
        raise CommandError("--gallery needs --probes DIR")
    if args.roc and args.gallery:
        raise CommandError("--roc is for verification protocols (--pairs, --bin, --ijb)")
    if args.roc and importlib.util.find_spec("matplotlib") is None:  # fail before the evaluation, not after it
        raise CommandError("--roc needs matplotlib: pip install matplotlib (or 'arcface[plots]')")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise CommandError(f"--out {out}: is a folder; give the report's file name (e.g. report.json)")
    images_root = Path(args.images) if args.images else (Path(args.ijb) if args.ijb else (Path(args.gallery) if args.gallery else None))
    options = EvalOptions(
        align=args.align, detector=detector_for(args, images_root), crop_size=args.crop_size, face_choice=args.face_choice,
        flip_test=not args.no_flip, metric=args.metric, batch_size=args.batch_size, workers=args.workers,
        device=device(args.device), precision=args.precision,
        cache_dir=None if args.no_cache else str(args.cache or embedding_cache_dir()), progress=progress(args) is not False and sys.stderr.isatty(),
    )
    options.validate()
    model, info, _ = load_model(args)
    if info.kind == "onnx":
        options.device = "cpu"  # batches stay on the host; onnxruntime picks its own provider (CUDA when installed)
    else:
        model = model.to(options.device)
    log.info("evaluating %s", info.describe())
    curve = None
    if args.pairs:
        report, curve = evaluate_pairs(model, info, args.pairs, args.images, options, n_folds=args.folds)
    elif args.bin:
        report, curve = evaluate_bin(model, info, args.bin, options, n_folds=args.folds)
    elif args.ijb:
        report, curve = evaluate_ijb(model, info, args.ijb, args.ijb_name, options, use_detector_score=not args.no_detector_score)
    else:
        report = evaluate_identification(model, info, args.gallery, args.probes, options, distractors=args.distractors)
    if args.roc and curve is None:
        log.warning("no ROC to plot (the pairs are all of one kind); %s not written", args.roc)
    if args.roc and curve is not None:
        plot_roc({Path(args.model).name: curve}, args.roc, title=f"ROC: {report['protocol']} {Path(args.pairs or args.bin or args.ijb).name}")
        report["roc_png"] = str(args.roc)
    text = json.dumps(report, indent=2) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(out.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
        log.info("report written to %s", out)
    else:
        sys.stdout.write(text)
    log.info("%s", _format_summary(report))
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "eval", help="verification / identification accuracy of a model (ours, insightface .pth, or ONNX)",
        description="Evaluate a face model. MODEL: an arcface checkpoint (.pt) or run folder, an insightface "
        "backbone .pth (with --arch), an .onnx face model (describe its input with --input-mean/--input-std/"
        "--input-layout/--bgr), or a registry name (`arcface models list`: its input convention comes with it). "
        "Prints the JSON report (or writes it with --out) and a one-line summary.",
    )
    add_model_argument(parser, positional=True)
    protocol = parser.add_argument_group("protocol (exactly one)")
    protocol.add_argument("--pairs", help="LFW-format pairs file (pairs.txt, pairsDevTest.txt) or arcface pairs TSV")
    protocol.add_argument("--images", help="image root the pairs' names are relative to (for --pairs)")
    protocol.add_argument("--bin", help="insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin, ...)")
    protocol.add_argument("--ijb", help="IJB-B/C folder (meta/ and loose_crop/) for 1:1 template verification")
    protocol.add_argument("--ijb-name", default="IJBC", choices=["IJBB", "IJBC"], help="which IJB set (default IJBC)")
    protocol.add_argument("--no-detector-score", action="store_true", help="IJB: do not weight images by their detector score")
    protocol.add_argument("--gallery", help="1:N: gallery folder, one subfolder per identity")
    protocol.add_argument("--probes", help="1:N: probe folder, one subfolder per identity (unknown identities are non-mated)")
    protocol.add_argument("--distractors", help="1:N: folder of distractor images added to the gallery (MegaFace style)")
    add_model_input_arguments(parser)
    images = parser.add_argument_group("images")
    images.add_argument("--align", default="auto", choices=["auto", "yunet", "none", "center"],
                        help="auto: 112x112 images as they are, others aligned with YuNet (default); yunet: always detect; "
                        "none: as they are (resized if needed); center: center crop, no detector")
    add_detector_argument(images)
    images.add_argument("--face-choice", default="largest", choices=["largest", "center", "score"],
                        help="which face of a several-face image to align: the largest (default, as the common evaluation "
                        "scripts, so numbers compare), the one nearest the image center, or the most confident")
    images.add_argument("--crop-size", type=int, help="center crop side in pixels (default half the short side)")
    run = parser.add_argument_group("scoring and running")
    run.add_argument("--metric", default="cosine", choices=["cosine", "l2"], help="pair score (same accuracy; threshold units differ)")
    run.add_argument("--no-flip", action="store_true", help="no flip-test (default: embedding of image + mirror)")
    run.add_argument("--folds", type=int, default=10, help="folds for files without their own (View 1, TSV, .bin)")
    run.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    run.add_argument("--workers", type=int, default=2, help="image reading/alignment processes (default 2)")
    add_device_argument(run)
    run.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast of a PyTorch model")
    run.add_argument("--cache", help="embedding cache folder (default: $ARCFACE_HOME/embeddings)")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    run.add_argument("--out", help="write the JSON report here (default: print it)")
    run.add_argument("--roc", help="write the ROC curve to this PNG (needs matplotlib)")
    parser.set_defaults(handler=_run)
