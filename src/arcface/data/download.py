"""Downloads for users with internet: LFW (deep-funneled images and protocol files) and the YuNet detector.

Nothing in the library downloads by itself; ``arcface data download`` (or these functions) does,
into a folder the user names. Files are fetched to a ``.partial`` name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import DataError

__all__ = ["download", "fetch_lfw", "fetch_yunet", "LFW_BASE_URL", "YUNET_URL", "LFW_PROTOCOL_FILES"]

log = logging.getLogger(__name__)

LFW_BASE_URL = "https://vis-www.cs.umass.edu/lfw"
LFW_PROTOCOL_FILES = ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt", "people.txt", "peopleDevTrain.txt", "peopleDevTest.txt")
YUNET_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"


def download(url: str, destination: str | Path, sha256: str | None = None) -> Path:
    """Fetch ``url`` to ``destination`` (skipped if it exists and matches ``sha256`` when given)."""
    destination = Path(destination)
    if destination.exists() and (sha256 is None or _sha256(destination) == sha256):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as error:  # URLError, HTTPError, timeouts
        partial.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({error}); check the connection or fetch the file by hand") from error
    if sha256 is not None and _sha256(partial) != sha256:
        partial.unlink(missing_ok=True)
        raise DataError(f"{url}: checksum mismatch (expected sha256 {sha256}); the download is corrupt")
    os.replace(partial, destination)
    return destination


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_lfw(destination: str | Path, base_url: str = LFW_BASE_URL) -> Path:
    """LFW deep-funneled as ``destination/images/<Name>/<Name>_0001.jpg`` plus the protocol files."""
    destination = Path(destination)
    for name in LFW_PROTOCOL_FILES:
        download(f"{base_url}/{name}", destination / name)
    images = destination / "images"
    if not images.is_dir():
        archive = download(f"{base_url}/lfw-deepfunneled.tgz", destination / "lfw-deepfunneled.tgz")
        staging = destination / ".extracting"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")  # refuses absolute paths and links out of the folder
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"{archive}: cannot extract ({error})") from error
        top = [p for p in staging.iterdir() if p.is_dir()]
        if len(top) != 1:
            raise DataError(f"{archive}: expected one top-level folder (lfw-deepfunneled/), found {len(top)}")
        os.replace(top[0], images)
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def fetch_yunet(destination: str | Path, url: str = YUNET_URL) -> Path:
    """The YuNet face detector ONNX file (OpenCV model zoo, MIT) into ``destination``."""
    return download(url, Path(destination) / Path(url).name)
