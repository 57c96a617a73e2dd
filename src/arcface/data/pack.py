"""Image folder <-> insightface RecordIO, with the image bytes stored unchanged.

Packing never re-encodes: a JPEG re-compressed on the way into a .rec loses quality once more
and makes a pack/unpack round trip impossible to check byte for byte. Unpacking names each file
by what its bytes are (JPEG, PNG), not by what the .rec was assumed to hold.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import DataError
from .face_records import FaceRecordFile, _write_face_layout
from .recordio import PathLike

__all__ = ["IMAGE_EXTENSIONS", "encoded_image_size", "pack_folder", "unpack_records", "sniff_extension"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Skipped files are logged one by one up to this many, then only counted.
_SKIP_WARNINGS = 10


def sniff_extension(data: bytes) -> str:
    """File extension for encoded image bytes: ``.jpg``, ``.png``, or ``.bin`` when unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".bin"


def _scan_folder(folder: Path) -> tuple[list[Path], list[int], int, list[str]]:
    """Image paths and labels (identities sorted by name -> 0..C-1, images sorted by name),
    the number of skipped entries, and the identity names."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected root/<identity>/<images>)")
    skipped = 0

    def skip(path: Path, why: str) -> None:
        nonlocal skipped
        skipped += 1
        if skipped <= _SKIP_WARNINGS:
            logger.warning("skipping %s: %s", path, why)

    identities = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            skip(Path(entry.path), "hidden")
        elif entry.is_dir():
            identities.append(entry.name)
        else:
            skip(Path(entry.path), "a file at the top level, not an identity folder")
    if not identities:
        raise DataError(f"{folder}: no identity folders (expected root/<identity>/<images>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, identity in enumerate(identities):
        images = []
        for entry in sorted(os.scandir(folder / identity), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                skip(path, f"not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        if not images:
            raise DataError(
                f"{folder / identity}: identity folder has no image files; remove it or add images "
                f"(classes must be 0..C-1 without gaps)"
            )
        paths.extend(images)
        labels.extend([label] * len(images))
    if skipped > _SKIP_WARNINGS:
        logger.warning("skipped %d entries in %s in all", skipped, folder)
    return paths, labels, skipped, identities


def encoded_image_size(data: bytes, path: Path) -> tuple[int, int]:
    """``(height, width)`` from the encoded header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None
    return height, width


def pack_folder(folder: PathLike, out_rec: PathLike) -> dict[str, int]:
    """Pack ``folder/<identity>/<image files>`` into an insightface .rec/.idx/``property``.

    Identities sorted by name get labels 0..C-1; images are sorted by name within each. Files
    whose extension is not an image's (jpg jpeg png bmp webp) are skipped with a warning. The
    ``property`` size is that of the first image; other sizes are counted and warned about.

    Returns:
        ``{"images": N, "classes": C, "skipped": files and folders skipped}``.

    Raises:
        DataError: no identity folder, an identity folder without images (named), or an image
            whose header cannot be read.
    """
    folder, out_rec = Path(folder), Path(out_rec)
    paths, labels, skipped, identities = _scan_folder(folder)
    sizes: dict[tuple[int, int], int] = {}
    first_size = encoded_image_size(paths[0].read_bytes(), paths[0])

    def payloads() -> Iterator[bytes]:
        for path in tqdm(paths, desc=f"packing {out_rec.name}", unit="img", disable=None):
            data = path.read_bytes()
            size = encoded_image_size(data, path)
            sizes[size] = sizes.get(size, 0) + 1
            yield data

    count = _write_face_layout(out_rec, labels, payloads(), first_size)
    others = count - sizes.get(first_size, 0)
    if others:
        logger.warning("%d of %d images are not %dx%d (property records the first image's size): %s",
                       others, count, first_size[0], first_size[1], sorted(sizes))
    return {"images": count, "classes": len(identities), "skipped": skipped}


def unpack_records(rec: PathLike, out_dir: PathLike) -> dict[str, int]:
    """Write every image of a .rec to ``out_dir/<label>/<key><ext>``, bytes unchanged.

    The extension comes from the bytes: ``.jpg`` for JPEG, ``.png`` for PNG, else ``.bin``.
    Works for insightface and plain im2rec files alike.

    Returns:
        ``{"images": N, "classes": C, "jpg": n, "png": n, "bin": n}``.
    """
    out_dir = Path(out_dir)
    counts = {"images": 0, "classes": 0, "jpg": 0, "png": 0, "bin": 0}
    with FaceRecordFile(rec) as records:
        made: set[int] = set()
        pairs = zip(records.image_keys, records.labels)
        for key, label in tqdm(pairs, total=len(records), desc=f"unpacking {records.rec_path.name}",
                               unit="img", disable=None):
            data = records.image_bytes(key)
            extension = sniff_extension(data)
            target = out_dir / str(label)
            if label not in made:
                target.mkdir(parents=True, exist_ok=True)
                made.add(label)
            (target / f"{key}{extension}").write_bytes(data)
            counts[extension[1:]] += 1
        counts["images"] = len(records)
        counts["classes"] = len(made)
    return counts
