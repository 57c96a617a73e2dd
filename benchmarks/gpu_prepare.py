"""Build ``gpu_data/``: everything the GPU experiments of ``benchmarks/gpu_claims.py`` read, in one folder.

What the LFW experiments need is packed small (about 46 MiB) and in one git-ignored folder, rebuilt by
this script, so that it can travel to a GPU machine with a copy of the working tree:

    gpu_data/train/lfw_devtrain.rec, .idx, property
                                 LFW View 1 training people with at least 2 images (peopleDevTrain.txt:
                                 1,184 people), aligned to 112x112 by YuNet (the `arcface lfw` recipe's
                                 alignment), JPEG bytes unchanged; labels 0..C-1 by sorted name, as the
                                 recipe's list
    gpu_data/train/classes.tsv   label, name, images
    gpu_data/eval/pairsDevTest.txt and eval/images/<name>/<name>_<NNNN>.jpg
                                 the 1,000 View 1 test pairs (people never trained on) and their aligned images
    gpu_data/judge/mobilefacenet.onnx
                                 the independent MobileFaceNet that judges inversions (never committed)
    gpu_data/manifest.json       counts, bytes and SHA-256 of each file, how it was made

Aligning reuses ``--aligned`` (the `arcface lfw` cache, runs/cache/lfw_aligned) when given, else aligns
the needed LFW photos itself with YuNet into ``--work`` (resumable: a journal of done images). Printed,
one per line: ``train_images``, ``train_classes``, ``eval_pairs``, ``eval_images``, ``total_mib``.

Run from the repository root::

    .venv/bin/python benchmarks/gpu_prepare.py --lfw ../shared/data/lfw_deepfunneled \\
        --judge ../shared/data/models/mobilefacenet_onnx/mobilefacenet.onnx --out gpu_data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from arcface.data.align_job import AlignOptions, align_folder
from arcface.data.errors import DataError
from arcface.data.pack import pack_folder
from arcface.data.protocols import read_pairs, read_people
from arcface.recipes.lfw import find_detector, find_lfw

log = logging.getLogger("benchmarks.gpu_prepare")

TRAIN_REC = "train/lfw_devtrain.rec"
CLASSES = "train/classes.tsv"
PAIRS = "eval/pairsDevTest.txt"
EVAL_IMAGES = "eval/images"
JUDGE = "judge/mobilefacenet.onnx"
MANIFEST = "manifest.json"
# What travels to a GPU machine with the working tree is kept under this size (a warning above 80% of it).
TRAVEL_LIMIT_MIB = 64


def training_people(lfw: Path) -> list[tuple[str, int]]:
    """(name, image count) of the recipe's training people, sorted by name: the label order of its list."""
    return sorted((name, count) for name, count in read_people(lfw / "peopleDevTrain.txt") if count >= 2)


def eval_images(lfw: Path) -> list[str]:
    """Relative paths (``name/name_NNNN.jpg``) of every image of pairsDevTest.txt, sorted."""
    return sorted({path for pair in read_pairs(lfw / "pairsDevTest.txt") for path in (pair.left, pair.right)})


def _link_tree(source: Path, relatives: list[str], staging: Path) -> None:
    """``staging/<relative>`` -> ``source/<relative>`` symlinks (real folders, linked files)."""
    for relative in relatives:
        target = staging / relative
        if not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((source / relative).resolve())


def _align(lfw: Path, detector: Path, relatives: list[str], work: Path, workers: int) -> Path:
    """Align the given LFW images into ``work/aligned`` (resumable); returns that folder."""
    staging = work / "photos"
    _link_tree(lfw / "images", relatives, staging)
    aligned = work / "aligned"
    report = align_folder(staging, aligned, AlignOptions(detector=str(detector), workers=workers))
    log.info("aligned %d of %d photos (%s)", report["faces_found"], report["images"], aligned)
    return aligned


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_bytes(root: Path) -> int:
    """Bytes of all regular files under root (links not followed)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def prepare(lfw: Path, detector: Path | None, judge: Path, out: Path, work: Path, aligned: Path | None, workers: int) -> dict:
    """Build ``out`` (see the module docstring); returns the manifest."""
    people = training_people(lfw)
    train_relatives = [f"{name}/{name}_{n:04d}.jpg" for name, count in people for n in range(1, count + 1)]
    test_relatives = eval_images(lfw)
    if aligned is None:
        if detector is None:
            raise DataError("no aligned images (--aligned) and no detector (--detector) to align them")
        aligned = _align(lfw, detector, train_relatives + test_relatives, work, workers)
    missing_test = [r for r in test_relatives if not (aligned / r).is_file()]
    if missing_test:
        raise DataError(f"{len(missing_test)} pairsDevTest images have no aligned face (first: {missing_test[0]}); "
                        "the evaluation needs every pair")
    present = [r for r in train_relatives if (aligned / r).is_file()]
    empty = sorted({r.split("/")[0] for r in train_relatives} - {r.split("/")[0] for r in present})
    if empty:
        # The recipe's list keeps such a person's label with no images; a pack would shift every later label.
        raise DataError(f"{len(empty)} training people have no aligned image (first: {empty[0]}); labels would not match the recipe's")

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pack_source = work / "pack"
    shutil.rmtree(pack_source, ignore_errors=True)
    _link_tree(aligned, present, pack_source)
    counts = pack_folder(pack_source, partial / TRAIN_REC)
    per_person = {name: 0 for name, _ in people}
    for relative in present:
        per_person[relative.split("/")[0]] += 1
    (partial / CLASSES).write_text("label\tname\timages\n" + "".join(
        f"{label}\t{name}\t{per_person[name]}\n" for label, (name, _) in enumerate(people)), encoding="utf-8")
    for relative in test_relatives:
        (partial / EVAL_IMAGES / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(aligned / relative, partial / EVAL_IMAGES / relative)
    shutil.copyfile(lfw / "pairsDevTest.txt", partial / PAIRS)
    (partial / JUDGE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(judge, partial / JUDGE)
    files = {str(p.relative_to(partial)): p for p in sorted(partial.rglob("*")) if p.is_file() and not str(p.relative_to(partial)).startswith(EVAL_IMAGES)}
    manifest = {
        "train_images": counts["images"], "train_classes": counts["classes"],
        "train_photos_listed": len(train_relatives), "train_photos_without_face": len(train_relatives) - len(present),
        "eval_pairs": len(read_pairs(partial / PAIRS)), "eval_images": len(test_relatives),
        "alignment": "YuNet 5-point similarity to the 112x112 ArcFace template (arcface data align defaults)",
        "files": {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in files.items()},
        "eval_images_bytes": folder_bytes(partial / EVAL_IMAGES),
    }
    manifest["total_bytes"] = folder_bytes(partial) + len(json.dumps(manifest, indent=1))
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)  # the folder appears whole or not at all
    shutil.rmtree(pack_source, ignore_errors=True)
    return manifest


def check(data: Path) -> dict:
    """The manifest of a built ``gpu_data`` folder, after checking every listed file's size.

    Raises:
        DataError: no manifest, or a file missing or of another size (a partial copy).
    """
    manifest_path = data / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{data}: no {MANIFEST}; build it with benchmarks/gpu_prepare.py (see its docstring)")
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["files"].items():
        path = data / name
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise DataError(f"{path}: missing or not {entry['bytes']} bytes; rebuild {data} with benchmarks/gpu_prepare.py")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", help="LFW deep-funneled folder (default: $ARCFACE_LFW or ../shared/data/lfw_deepfunneled)")
    parser.add_argument("--detector", help="YuNet .onnx (default: a YuNet model next to the LFW folder)")
    parser.add_argument("--aligned", type=Path, help="already aligned LFW (the `arcface lfw` cache, runs/cache/lfw_aligned): no alignment")
    parser.add_argument("--judge", type=Path, default=Path("../shared/data/models/mobilefacenet_onnx/mobilefacenet.onnx"))
    parser.add_argument("--workers", type=int, default=2, help="alignment processes")
    parser.add_argument("--work", type=Path, default=Path("runs/gpu_prepare"), help="aligned photos before packing (resumable)")
    parser.add_argument("--out", type=Path, default=Path("gpu_data"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    try:
        lfw = find_lfw(args.lfw)
        detector = None if args.aligned else find_detector(args.detector, lfw)
        if not args.judge.is_file():
            raise DataError(f"{args.judge}: judge ONNX not found (--judge)")
        if args.aligned is not None and not args.aligned.is_dir():
            raise DataError(f"{args.aligned}: not a folder (--aligned)")
        manifest = prepare(lfw, detector, args.judge, args.out, args.work, args.aligned, args.workers)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for key in ("train_images", "train_classes", "train_photos_without_face", "eval_pairs", "eval_images"):
        print(f"{key}={manifest[key]}", flush=True)
    total_mib = manifest["total_bytes"] / 2**20
    print(f"total_mib={total_mib:.1f}", flush=True)
    if total_mib > 0.8 * TRAVEL_LIMIT_MIB:
        log.warning("%s is %.1f MiB: close to the %d MiB planned for a copy to a GPU machine", args.out, total_mib, TRAVEL_LIMIT_MIB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
