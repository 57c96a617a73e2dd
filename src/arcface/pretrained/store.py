"""Models in the home: ``pull`` (download, verify, unpack, rename into place) and ``resolve_model``.

A pulled model lives in ``$ARCFACE_HOME/models/<name>/`` with a ``manifest.json`` that records the
sha256 of the download and of the model file. Where the entry pins a sha256 the download must match
it; otherwise the first download's digest is recorded (trust on first use) and the model file is
checked against the manifest every time it is loaded, so a file changed or damaged later is
refused. The folder appears only when everything is in it: work happens in a hidden staging folder
renamed at the end, and a failure removes everything it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..data.download import download, extract_archive, file_digest
from ..data.errors import DataError
from ..home import models_dir
from .registry import ModelEntry, find_entry_for_path, get_model

__all__ = ["pull", "pulled_path", "is_pulled", "resolve_model", "ResolvedModel", "input_arguments", "MANIFEST"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz")


def _folder(name: str) -> Path:
    return models_dir() / name


def is_pulled(entry: ModelEntry) -> bool:
    return entry.kind == "local" or (_folder(entry.name) / MANIFEST).is_file()


def _read_manifest(entry: ModelEntry) -> dict:
    path = _folder(entry.name) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["file"], manifest["file_sha256"]  # noqa: B018 -- both must be there
        return manifest
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: unreadable manifest ({error}); run `arcface models pull {entry.name} --force`") from None


def pulled_path(entry: ModelEntry, verify: bool = True) -> Path:
    """The model file of a pulled entry, its sha256 checked against the manifest (and the pin)."""
    if entry.kind == "local":
        path = Path(entry.path)
        if not path.is_file():
            raise DataError(f"{entry.name}: registered file {path} not found (`arcface models remove {entry.name}`, then add it again)")
        return path
    if not is_pulled(entry):
        raise DataError(f"{entry.name} is not in the model home {models_dir()}: run `arcface models pull {entry.name}`")
    manifest = _read_manifest(entry)
    path = _folder(entry.name) / manifest["file"]
    if not path.is_file():
        raise DataError(f"{path}: missing from the model home; run `arcface models pull {entry.name} --force`")
    if verify:
        found = file_digest(path)
        if found != manifest["file_sha256"]:
            raise DataError(f"{path}: sha256 {found} differs from the one recorded at download ({manifest['file_sha256']}); "
                            f"the file changed or is damaged: run `arcface models pull {entry.name} --force`")
    return path


def _is_archive(url: str) -> bool:
    return PurePosixPath(url.split("?", 1)[0]).name.lower().endswith(ARCHIVE_SUFFIXES)


def pull(name: str, *, force: bool = False, progress: bool | None = None) -> Path:
    """Download a registry entry into the model home (once); returns its model file.

    A second call returns the file already there, verified, without downloading again (unless
    ``force``). On any failure (network, a download cut short, a wrong checksum, an archive with
    unsafe member names) nothing is left in the home.
    """
    entry = get_model(name)
    if entry.kind == "local":
        return pulled_path(entry)
    target = _folder(entry.name)
    if is_pulled(entry) and not force:
        path = pulled_path(entry)
        log.info("%s is already in %s", entry.name, target)
        return path
    created = [folder for folder in (models_dir().parent, models_dir()) if not folder.exists()]
    staging = models_dir() / f".{entry.name}.staging"
    file_name = PurePosixPath(entry.url.split("?", 1)[0]).name
    fetched = models_dir() / f".{entry.name}.{file_name}"
    log.info("downloading %s (%s) from %s", entry.name, entry.size or "size unknown", entry.url)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        download(entry.url, fetched, sha256=entry.sha256, progress=progress)
        download_sha256 = entry.sha256 or file_digest(fetched)
        staging.mkdir(parents=True)
        if _is_archive(entry.url):
            extract_archive(fetched, staging)
            wanted = entry.member or ""
            matches = sorted(p for p in staging.rglob("*") if p.is_file() and p.name == PurePosixPath(wanted).name)
            if len(matches) != 1:
                raise DataError(f"{entry.url}: the archive holds {len(matches)} file(s) named {wanted!r}; expected one")
            model_file = matches[0]
        else:
            model_file = staging / file_name
            os.replace(fetched, model_file)
        manifest = {
            "name": entry.name, "url": entry.url, "download_sha256": download_sha256, "pinned": entry.sha256 is not None,
            "file": model_file.relative_to(staging).as_posix(), "file_sha256": file_digest(model_file),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    finally:
        fetched.unlink(missing_ok=True)
    if entry.sha256 is None:
        log.info("%s: no published checksum; recorded sha256 %s in %s, checked at every load", entry.name,
                 manifest["file_sha256"], target / MANIFEST)
    return target / manifest["file"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model file and, when it came from the registry (or is registered), its entry."""

    path: Path
    entry: ModelEntry | None


def resolve_model(name_or_path: str | os.PathLike, *, download: bool = False, progress: bool | None = None) -> ResolvedModel:
    """A path (a file or folder that exists) or a registry name -> the file to load.

    Args:
        download: pull a registry model that is not in the home yet; otherwise that is an error
            telling the user to run ``arcface models pull NAME``.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return ResolvedModel(path, find_entry_for_path(path) if path.is_file() else None)
    try:
        entry = get_model(text)
    except DataError:
        if os.sep in text or "/" in text or path.suffix:
            raise DataError(f"{text}: model file not found") from None
        raise DataError(f"{text}: neither a model file nor a registered model name (see `arcface models list`)") from None
    if entry.task != "recognition":
        raise DataError(f"{entry.name} is a {entry.task} model, not a face recognition model")
    if not is_pulled(entry) and download:
        return ResolvedModel(pull(entry.name, progress=progress), entry)
    return ResolvedModel(pulled_path(entry), entry)


def input_arguments(entry: ModelEntry | None, *, input_mean: float | None = None, input_std: float | None = None,
                    input_layout: str | None = None, bgr: bool | None = None) -> dict:
    """Arguments for ``load_face_model``: what the caller gave, else the entry's, else unset (the loader's default).

    An entry describes ONNX models; a PyTorch checkpoint takes our fixed input and gets nothing here.
    """
    values = entry.load_arguments() if entry is not None else {}
    chosen = {"input_mean": input_mean, "input_std": input_std, "input_layout": input_layout, "bgr": bgr}
    merged = {key: value if value is not None else values.get(key) for key, value in chosen.items()}
    if merged["input_layout"] is None:
        merged["input_layout"] = "auto"
    return merged
