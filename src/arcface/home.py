"""The one model and data home, and where commands look for LFW and the face detector.

``$ARCFACE_HOME`` (default ``$XDG_CACHE_HOME/arcface``, that is ``~/.cache/arcface``) holds::

    models/<name>/   what ``arcface models pull NAME`` fetched, with manifest.json (checksums)
    models/yunet/    the YuNet detector (``arcface models pull yunet`` = ``arcface data download yunet``)
    models.json      models registered with ``arcface models add``
    lfw/             LFW (``arcface data download lfw``)
    embeddings/      the evaluation embedding cache

What ``arcface data download`` and ``arcface models pull`` write is exactly where every command looks
next, so the setup chains without flags. The lookup orders below are printed in the error when
nothing is found.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = [
    "HOME_ENV",
    "DETECTOR_LOOKUP",
    "LFW_LOOKUP",
    "arcface_home",
    "models_dir",
    "lfw_home",
    "embedding_cache_dir",
    "find_detector",
    "find_lfw",
    "LFW_REQUIRED",
]

log = logging.getLogger(__name__)

HOME_ENV = "ARCFACE_HOME"
DETECTOR_ENV = "ARCFACE_DETECTOR"
LFW_ENV = "ARCFACE_LFW"
# This repository's own layout: the real data sits in ../shared/data beside the checkout.
REPOSITORY_LFW = "../shared/data/lfw_deepfunneled"
LFW_REQUIRED = ("images", "pairsDevTest.txt", "peopleDevTrain.txt")
FOLDERS_ABOVE = 4  # how many folders up from the images a models/yunet/ folder is looked for

# The order after an explicit --detector / --lfw (shown in --help and in the not-found errors).
DETECTOR_LOOKUP = (
    "$ARCFACE_DETECTOR, else $ARCFACE_HOME/models/yunet/*.onnx (what `arcface models pull "
    "yunet` writes), else models/yunet/*.onnx or models/*yunet*.onnx in the images' folder or the 3 folders above it"
)
LFW_LOOKUP = (
    "$ARCFACE_LFW, else $ARCFACE_HOME/lfw (what `arcface data download lfw` writes), "
    f"else {REPOSITORY_LFW}"
)


def arcface_home() -> Path:
    """``$ARCFACE_HOME``, else ``$XDG_CACHE_HOME/arcface``, else ``~/.cache/arcface`` (not created here)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "arcface"


def models_dir() -> Path:
    return arcface_home() / "models"


def lfw_home() -> Path:
    return arcface_home() / "lfw"


def embedding_cache_dir() -> Path:
    return arcface_home() / "embeddings"


def _onnx_files(folder: Path) -> list[Path]:
    found = sorted((folder / "models" / "yunet").glob("*.onnx")) or sorted((folder / "models").glob("*yunet*.onnx"))
    return found


def find_detector(given: str | os.PathLike | None, near: str | os.PathLike | None = None, *, required: bool = False) -> str | None:
    """The YuNet detector, by :data:`DETECTOR_LOOKUP`.

    Args:
        given: an explicit path (--detector); it must exist.
        near: the images' folder (or an image): ``models/yunet/`` is looked for there and above.
        required: raise when nothing is found; otherwise return None (fine for aligned faces).
    """
    from .data.errors import DataError  # here, not at the top: --help texts import this module without torch

    if given:
        if not Path(given).is_file():
            raise DataError(f"{given}: face detector model not found")
        return str(given)
    if os.environ.get(DETECTOR_ENV):
        path = Path(os.environ[DETECTOR_ENV])
        if not path.is_file():
            raise DataError(f"${DETECTOR_ENV}={path}: face detector model not found")
        return str(path)
    home = sorted((models_dir() / "yunet").glob("*.onnx"))
    if home:
        return str(home[-1])
    if near is not None:
        start = Path(near).resolve()
        folders = [start, *start.parents] if start.is_dir() else list(start.parents)
        for folder in folders[:FOLDERS_ABOVE]:
            found = _onnx_files(folder)
            if found:
                return str(found[-1])
    if required:
        raise DataError(f"no face detector found (looked at: --detector (not given), {DETECTOR_LOOKUP}; $ARCFACE_HOME is {arcface_home()}); "
                        "run `arcface models pull yunet` or pass --detector PATH")
    return None


def find_lfw(given: str | os.PathLike | None) -> Path:
    """The LFW folder (images/, pairsDevTest.txt, peopleDevTrain.txt, ...), by :data:`LFW_LOOKUP`."""
    from .data.errors import DataError

    if given:
        path = Path(given)
        missing = [name for name in LFW_REQUIRED if not (path / name).exists()]
        if missing:
            raise DataError(f"{path}: not an LFW folder (missing {', '.join(missing)}); "
                            "download it with `arcface data download lfw` or pass --lfw DIR")
        return path
    tried = []
    for label, candidate in ((f"${LFW_ENV}", os.environ.get(LFW_ENV)), ("$ARCFACE_HOME/lfw", str(lfw_home())), ("", REPOSITORY_LFW)):
        if not candidate:
            tried.append(f"{label} (not set)")
            continue
        path = Path(candidate)
        if all((path / name).exists() for name in LFW_REQUIRED):
            return path
        tried.append(f"{label + ' = ' if label else ''}{path} (absent or incomplete)")
    raise DataError(f"LFW not found (looked at: --lfw (not given), {', '.join(tried)}); "
                    "run `arcface data download lfw` (into $ARCFACE_HOME/lfw) or pass --lfw DIR")
