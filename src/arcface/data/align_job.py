"""``arcface data align SRC DST``: align a whole folder tree of photos, resumably, in several processes.

Every source image gets one line in ``DST/.align_journal.jsonl`` once its output is written (outputs
are written to a temporary name and renamed, so a crash never leaves half a file); a re-run skips the
images already in the journal, so an interrupted run loses nothing. ``DST/align_report.json``
summarizes the journal: counts and the lists of images with no face, several faces, unreadable files
and center-crop fallbacks.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from .align import FaceAligner, FaceDetector, center_crop_face
from .errors import DataError

__all__ = ["AlignOptions", "align_folder", "IMAGE_SUFFIXES", "JOURNAL_NAME", "REPORT_NAME"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff"}
JOURNAL_NAME = ".align_journal.jsonl"
REPORT_NAME = "align_report.json"
NO_FACE_POLICIES = ("skip", "center-crop")


@dataclass
class AlignOptions:
    """Settings of one alignment run (written into the report)."""

    detector: str  # path of the YuNet ONNX model
    score_threshold: float = 0.6  # minimum detection confidence
    all_faces: bool = False  # write every face (name_face2.jpg, ...) instead of the most central one
    no_face: str = "skip"  # "skip" or "center-crop" (central square, see fallback_fraction)
    fallback_fraction: float = 0.5  # side of the center crop relative to the image's shorter side
    workers: int = 2  # processes
    jpeg_quality: int = 95
    size: int = 112

    def validate(self) -> None:
        if self.no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {NO_FACE_POLICIES}, got {self.no_face!r}")
        if not 0.0 < self.fallback_fraction <= 1.0:
            raise ValueError(f"fallback_fraction must be in (0, 1], got {self.fallback_fraction}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass
class _Outcome:
    path: str  # relative to the source root
    status: str  # ok | multiple_faces | no_face | fallback | unreadable
    faces: int = 0
    outputs: list[str] = field(default_factory=list)
    error: str = ""


def list_images(root: Path) -> list[str]:
    """Relative paths of all image files under root, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# ------------------------------------------------------------------------- worker side
_worker: dict = {}


def _init_worker(options: AlignOptions, source: str, destination: str) -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes
    detector = FaceDetector(options.detector, score_threshold=options.score_threshold)
    _worker.update(aligner=FaceAligner(detector, options.size), options=options, source=Path(source), destination=Path(destination))


def _write_image(path: Path, image, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.jpg")
    if not cv2.imwrite(str(partial), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cannot write {partial}")
    os.replace(partial, path)


def _align_one(relative: str) -> _Outcome:
    options: AlignOptions = _worker["options"]
    source: Path = _worker["source"] / relative
    output = Path(relative).with_suffix(".jpg")
    try:
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    except cv2.error as error:
        return _Outcome(relative, "unreadable", error=str(error))
    if image is None:
        return _Outcome(relative, "unreadable", error="not a readable image (corrupt, truncated or unsupported)")
    aligner: FaceAligner = _worker["aligner"]
    detections = aligner.detector.detect(image)
    faces = aligner.warp(image, detections, all_faces=options.all_faces)
    destination: Path = _worker["destination"]
    if not faces:
        if options.no_face == "skip":
            return _Outcome(relative, "no_face")
        _write_image(destination / output, center_crop_face(image, options.fallback_fraction, options.size), options.jpeg_quality)
        return _Outcome(relative, "fallback", outputs=[str(output)])
    outputs = []
    for index, face in enumerate(faces):
        name = output if index == 0 else output.with_name(f"{output.stem}_face{index + 1}.jpg")
        _write_image(destination / name, face.image, options.jpeg_quality)
        outputs.append(str(name))
    status = "multiple_faces" if len(detections) > 1 else "ok"
    return _Outcome(relative, status, faces=len(detections), outputs=outputs)


# ------------------------------------------------------------------------- driver side
def _read_journal(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as journal:
        for number, line in enumerate(journal, start=1):
            try:
                entry = json.loads(line)
                done[entry["path"]] = entry
            except (json.JSONDecodeError, KeyError):
                # A line cut by a crash: that image is simply aligned again.
                log.warning("%s:%d: unreadable journal line ignored", path, number)
    return done


def align_folder(source: str | Path, destination: str | Path, options: AlignOptions) -> dict:
    """Align every image under ``source`` into ``destination`` (same relative paths, .jpg).

    Returns:
        The report (also written to ``destination/align_report.json``).

    Raises:
        DataError: missing source folder or detector model, or no image under the source.
    """
    options.validate()
    source, destination = Path(source), Path(destination)
    if not source.is_dir():
        raise DataError(f"{source}: source folder not found")
    FaceDetector(options.detector, options.score_threshold)  # fail early on a bad model path
    images = list_images(source)
    if not images:
        raise DataError(f"{source}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    destination.mkdir(parents=True, exist_ok=True)
    journal_path = destination / JOURNAL_NAME
    done = _read_journal(journal_path)
    todo = [relative for relative in images if relative not in done]
    if done:
        log.info("resuming: %d of %d images already aligned", len(images) - len(todo), len(images))
    start = time.perf_counter()
    with open(journal_path, "a", encoding="utf-8") as journal, multiprocessing.get_context("spawn").Pool(
        options.workers, initializer=_init_worker, initargs=(options, str(source), str(destination))
    ) as pool:
        for outcome in tqdm(pool.imap_unordered(_align_one, todo, chunksize=16), total=len(todo), desc="align", unit="img", disable=None):
            entry = asdict(outcome)
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            done[outcome.path] = entry
    seconds = time.perf_counter() - start
    report = _report(source, destination, options, images, done, len(todo), seconds)
    (destination / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _report(source: Path, destination: Path, options: AlignOptions, images: list[str], done: dict, processed: int, seconds: float) -> dict:
    by_status: dict[str, list[str]] = {}
    for relative in images:
        entry = done.get(relative)
        if entry is not None:
            by_status.setdefault(entry["status"], []).append(relative)
    found = len(by_status.get("ok", [])) + len(by_status.get("multiple_faces", []))
    return {
        "source": str(source),
        "destination": str(destination),
        "options": asdict(options),
        "images": len(images),
        "faces_found": found,
        "face_found_rate": found / len(images),
        "counts": {status: len(paths) for status, paths in sorted(by_status.items())},
        "processed_this_run": processed,
        "images_per_second_this_run": processed / seconds if seconds > 0 and processed else None,
        "no_face": by_status.get("no_face", []),
        "fallback": by_status.get("fallback", []),
        "multiple_faces": by_status.get("multiple_faces", []),
        "unreadable": by_status.get("unreadable", []),
    }
