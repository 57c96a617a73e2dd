"""``arcface data pack | unpack | align | download | corrupt``: dataset formats, face alignment, label noise."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import CommandError
from .common import add_detector_argument, detector_for, progress

__all__ = ["register"]

log = logging.getLogger(__name__)


def _pack(args: argparse.Namespace) -> int:
    from ..data.pack import pack_folder

    out = Path(args.out)
    if out.suffix != ".rec":
        raise CommandError(f"{out}: the output must be a .rec path (the .idx and property are written beside it)")
    counts = pack_folder(args.folder, out)
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


def _corrupt(args: argparse.Namespace) -> int:
    from ..clean.noise import write_noisy_dataset

    if Path(args.out).resolve() == Path(args.data).resolve():
        raise CommandError("--out must differ from the input dataset")
    report = write_noisy_dataset(args.data, args.out, args.rate, args.kind, args.seed, args.outside)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    from ..data.unpack import unpack

    counts = unpack(args.source, args.out_dir)
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


def _align(args: argparse.Namespace) -> int:
    from ..data.align_job import AlignOptions, align_folder

    detector = detector_for(args, args.source, required=True)
    options = AlignOptions(
        detector=detector,
        score_threshold=args.score_threshold,
        all_faces=args.all_faces,
        no_face=args.no_face,
        fallback_fraction=args.fallback_fraction,
        workers=args.workers,
    )
    destination = Path(args.destination)
    folder = destination.with_name(destination.stem + "_aligned") if destination.suffix == ".rec" else destination
    report = align_folder(args.source, folder, options)
    log.info(
        "%d of %d images aligned (%.2f%%); no face: %d, unreadable: %d, several faces: %d; report: %s",
        report["faces_found"], report["images"], 100 * report["face_found_rate"], len(report["no_face"]),
        len(report["unreadable"]), len(report["multiple_faces"]), folder / "align_report.json",
    )
    if destination.suffix == ".rec":
        from ..data.pack import pack_folder

        pack_folder(folder, destination)
    return 0


def _download(args: argparse.Namespace) -> int:
    from ..data.download import fetch_lfw, fetch_yunet
    from ..home import lfw_home
    from ..pretrained import pull

    if args.what == "lfw":
        path = fetch_lfw(args.out or lfw_home(), progress=progress(args))
    elif args.out:
        path = fetch_yunet(args.out, progress=progress(args))
    else:  # the same place and checks as `arcface models pull yunet`
        path = pull("yunet", progress=progress(args))
    log.info("%s is in %s", args.what, path)
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser("data", help="dataset formats (.rec, .bin, folders) and face alignment")
    data.set_defaults(verb_parser=data)
    actions = data.add_subparsers(dest="action", metavar="ACTION")

    pack = actions.add_parser("pack", help="image folder (root/<identity>/<image>) -> insightface .rec/.idx/property")
    pack.add_argument("folder", help="image folder: one sub-folder per identity")
    pack.add_argument("out", metavar="OUT.rec", help="output .rec (the .idx and property are written beside it)")
    pack.set_defaults(handler=_pack)

    unpack = actions.add_parser("unpack", help=".rec -> OUT_DIR/<label>/<key>.jpg (bytes unchanged); .bin -> images + pairs")
    unpack.add_argument("source", metavar="SRC", help="an insightface .rec (with its .idx) or a verification .bin")
    unpack.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    unpack.set_defaults(handler=_unpack)

    align = actions.add_parser("align", help="detect faces (YuNet) and align them to the 112x112 ArcFace template")
    align.add_argument("source", metavar="SRC", help="folder of photos (any tree; relative paths are kept)")
    align.add_argument("destination", metavar="DST", help="output folder, or a .rec path (aligned folder + pack)")
    add_detector_argument(align)
    align.add_argument("--score-threshold", type=float, default=0.6, help="minimum detection confidence")
    align.add_argument("--all-faces", action="store_true", help="write every face, not only the most central one")
    align.add_argument("--no-face", choices=["skip", "center-crop"], default="skip", help="what to do without a face")
    align.add_argument("--fallback-fraction", type=float, default=0.5, help="center-crop side / shorter image side")
    align.add_argument("--workers", type=int, default=2, help="processes")
    align.set_defaults(handler=_align)

    download = actions.add_parser(
        "download", help="fetch LFW (images + protocol files) or the YuNet detector (internet) into the model home",
        description="Downloads are checked against the published checksums (LFW: MD5; YuNet: sha256) and written "
        "atomically. Without --out they go where every command looks next: $ARCFACE_HOME/lfw and "
        "$ARCFACE_HOME/models/yunet ($ARCFACE_HOME defaults to ~/.cache/arcface).",
    )
    download.add_argument("what", choices=["lfw", "yunet"], help="what to fetch")
    download.add_argument("--out", help="destination folder (default: $ARCFACE_HOME/lfw or $ARCFACE_HOME/models/yunet)")
    download.set_defaults(handler=_download)

    corrupt = actions.add_parser(
        "corrupt", help="inject label noise with a ground truth (to measure cleaning): OUT/train.txt, truth.tsv, report.json",
        description="closed: relabel a fraction of the samples to other identities of the set; open: replace a fraction "
        "of the images by faces of identities outside the set (--outside), labels kept. The dataset size is unchanged.",
    )
    corrupt.add_argument("data", help="image folder (identity/image) or 'path label' list file")
    corrupt.add_argument("--rate", type=float, required=True, help="fraction of noisy samples, e.g. 0.3")
    corrupt.add_argument("--kind", choices=["closed", "open"], required=True)
    corrupt.add_argument("--seed", type=int, default=0, help="which samples are corrupted")
    corrupt.add_argument("--outside", help="open-set: folder or list of images of identities not in the data")
    corrupt.add_argument("--out", required=True, help="output folder")
    corrupt.set_defaults(handler=_corrupt)
