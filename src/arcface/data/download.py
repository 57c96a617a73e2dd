"""Downloads for users with internet: LFW (deep-funneled images and protocol files) and the YuNet detector.

Nothing in the library downloads by itself; ``arcface data download`` / ``arcface models pull`` (or
these functions) do. A download is streamed (with a progress bar on a terminal) to a ``.partial``
name beside its destination, its length checked against the server's Content-Length (a connection
cut half-way is not a complete file), its checksum verified when one is known, and only then
renamed into place; on any failure the partial file is removed. Archives are unpacked only when
every member name stays inside the destination (no absolute names, no ``..``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from .errors import DataError

__all__ = [
    "download",
    "file_digest",
    "check_archive",
    "extract_archive",
    "fetch_lfw",
    "fetch_yunet",
    "LFW_BASE_URL",
    "LFW_MD5",
    "YUNET_URL",
    "YUNET_SHA256",
    "LFW_PROTOCOL_FILES",
]

log = logging.getLogger(__name__)

LFW_BASE_URL = "https://vis-www.cs.umass.edu/lfw"
LFW_PROTOCOL_FILES = ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt", "people.txt", "peopleDevTrain.txt", "peopleDevTest.txt")
# The MD5 digests the LFW site publishes for its archive (and that torchvision pins for every file);
# the protocol files' digests were checked against a copy of the files.
LFW_MD5 = {
    "lfw-deepfunneled.tgz": "68331da3eb755a505a502b5aacb3c201",
    "pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
    "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
    "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
    "people.txt": "450f0863dd89e85e73936a6d71a3474b",
    "peopleDevTrain.txt": "54eaac34beb6d042ed3a7d883e247a21",
    "peopleDevTest.txt": "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5",
}
YUNET_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
# The Git LFS object id (the file's sha256) of that file in opencv_zoo; 232,589 bytes.
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a whole file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_checksum(checksum: str | None, sha256: str | None) -> tuple[str, str] | None:
    if sha256:
        return "sha256", sha256.lower()
    if not checksum:
        return None
    algorithm, _, value = checksum.partition(":")
    if algorithm not in ("sha256", "md5") or not value:
        raise ValueError(f"checksum must be 'sha256:HEX' or 'md5:HEX', got {checksum!r}")
    return algorithm, value.lower()


def download(url: str, destination: str | Path, sha256: str | None = None, *, checksum: str | None = None,
             progress: bool | None = None) -> Path:
    """Fetch ``url`` to ``destination``, atomically; skipped when it exists (and matches the checksum).

    Args:
        sha256: expected sha256 of the file (shorthand for ``checksum="sha256:..."``).
        checksum: ``"sha256:HEX"`` or ``"md5:HEX"`` (some publishers give only MD5).
        progress: None: a bar when stderr is a terminal; False: none.

    Raises:
        DataError: the download failed, was cut short, or does not match the checksum; nothing is
            left at ``destination`` or beside it.
    """
    destination = Path(destination)
    expected = _parse_checksum(checksum, sha256)
    if destination.exists() and (expected is None or file_digest(destination, expected[0]) == expected[1]):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    try:
        received, total = _stream(url, partial, destination.name, progress)
        if total is not None and received != total:
            raise DataError(f"{url}: the download was cut off after {received:,} of {total:,} bytes; nothing kept, run it again")
        if expected is not None:
            found = file_digest(partial, expected[0])
            if found != expected[1]:
                raise DataError(f"{url}: checksum mismatch ({expected[0]} {found}, expected {expected[1]}); "
                                "the download is corrupt or the file changed upstream; nothing kept")
        os.replace(partial, destination)
    except BaseException:  # incl. KeyboardInterrupt: never leave a partial file that looks like progress
        partial.unlink(missing_ok=True)
        raise
    return destination


def _stream(url: str, out_path: Path, name: str, progress: bool | None) -> tuple[int, int | None]:
    """(bytes received, Content-Length or None); urllib does not raise when a connection closes early."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(out_path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None if progress is not False else True) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except OSError as error:  # URLError, HTTPError, timeouts, a reset connection
        raise DataError(f"{url}: download failed ({error}); check the connection or fetch the file by hand") from error
    except Exception as error:  # http.client.IncompleteRead of a chunked response
        raise DataError(f"{url}: download failed ({type(error).__name__}: {error}); run it again") from error
    return received, total


def _unsafe(name: str) -> bool:
    """An archive member name that could land outside the extraction folder."""
    if not name or "\x00" in name:
        return True
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or ".." in posix.parts or ".." in windows.parts


def _members(archive: Path) -> tuple[str, list[str]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            return "zip", handle.namelist()
    try:
        with tarfile.open(archive) as handle:
            names = []
            for member in handle.getmembers():
                names.append(member.name)
                if (member.issym() or member.islnk()) and _unsafe(member.linkname):
                    names.append(member.linkname)
            return "tar", names
    except tarfile.TarError as error:
        raise DataError(f"{archive}: not a zip or tar archive ({error})") from None


def check_archive(archive: str | Path) -> str:
    """The archive's kind ("zip" or "tar"); DataError if any member name is absolute or has ``..``."""
    archive = Path(archive)
    kind, names = _members(archive)
    bad = [name for name in names if _unsafe(name)]
    if bad:
        raise DataError(f"{archive}: refused: member {bad[0]!r} would be written outside the destination "
                        f"(absolute path or '..'; {len(bad)} such member(s)); nothing extracted")
    return kind


def extract_archive(archive: str | Path, destination: str | Path) -> Path:
    """Unpack a zip or tar archive into ``destination`` after :func:`check_archive` passed."""
    archive, destination = Path(archive), Path(destination)
    kind = check_archive(archive)
    destination.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(destination)
        else:
            with tarfile.open(archive) as handle:
                handle.extractall(destination, filter="data")  # also refuses links out of the folder
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as error:
        raise DataError(f"{archive}: cannot extract ({error})") from error
    return destination


def fetch_lfw(destination: str | Path, base_url: str | None = None, checksums: dict[str, str] | None = None,
              progress: bool | None = None) -> Path:
    """LFW deep-funneled as ``destination/images/<Name>/<Name>_0001.jpg`` plus the protocol files.

    Args:
        base_url: where the files are (default :data:`LFW_BASE_URL`; a mirror must serve the same bytes).
        checksums: file name -> MD5 (default :data:`LFW_MD5`, the published digests).
    """
    destination = Path(destination)
    base_url = base_url or LFW_BASE_URL
    checksums = LFW_MD5 if checksums is None else checksums
    for name in LFW_PROTOCOL_FILES:
        download(f"{base_url}/{name}", destination / name, checksum=_md5(checksums, name), progress=progress)
    images = destination / "images"
    if not images.is_dir():
        archive = download(f"{base_url}/lfw-deepfunneled.tgz", destination / "lfw-deepfunneled.tgz",
                           checksum=_md5(checksums, "lfw-deepfunneled.tgz"), progress=progress)
        staging = destination / ".extracting"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            extract_archive(archive, staging)
            top = [p for p in staging.iterdir() if p.is_dir()]
            if len(top) != 1:
                raise DataError(f"{archive}: expected one top-level folder (lfw-deepfunneled/), found {len(top)}")
            os.replace(top[0], images)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def _md5(checksums: dict[str, str], name: str) -> str | None:
    return f"md5:{checksums[name]}" if name in checksums else None


def fetch_yunet(destination: str | Path, url: str | None = None, sha256: str | None = YUNET_SHA256, progress: bool | None = None) -> Path:
    """The YuNet face detector ONNX file (OpenCV model zoo, MIT) into ``destination``, checksum verified."""
    url = url or YUNET_URL
    return download(url, Path(destination) / Path(url).name, sha256=sha256, progress=progress)
