"""Named face models: published ones to download, and local files registered by the user.

Each :class:`ModelEntry` says what a model is (task, embedding size, input convention), where it
comes from (source page, download URL, checksum), under which licence, and what accuracy its
publisher reports. Built-in entries are :data:`BUILTIN`; ``arcface models add NAME PATH`` writes
user entries (kind "local") to ``$ARCFACE_HOME/models.json``.

Input conventions of the insightface packs were read from insightface's own code
(``python-package/insightface/model_zoo/arcface_onnx.py``): a recognition ONNX model whose first
nodes are not an mxnet-style Sub/Mul pair gets ``input_mean = input_std = 127.5``, and faces read
by OpenCV (BGR) go through ``cv2.dnn.blobFromImages(..., swapRB=True)``: the network takes
``(x - 127.5) / 127.5`` in RGB order, NCHW, 112x112 -- the same convention as the models this
project trains.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..data.download import YUNET_SHA256, YUNET_URL
from ..data.errors import DataError
from ..data.protocols import atomic_output
from ..home import arcface_home

__all__ = [
    "ModelEntry",
    "BUILTIN",
    "list_models",
    "get_model",
    "find_entry_for_path",
    "add_local_model",
    "remove_local_model",
    "user_registry_path",
    "TASKS",
]

log = logging.getLogger(__name__)

TASKS = ("recognition", "detection")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INSIGHTFACE_LICENCE = "non-commercial research only (insightface model zoo)"
INSIGHTFACE_SOURCE = "https://github.com/deepinsight/insightface/tree/master/model_zoo"
INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    The input fields describe what the network takes, as ``(x - input_mean) / input_std`` of 0..255
    pixels in ``channel_order``, ``layout``, ``input_size`` square (detection entries take a BGR
    photo of any size and ignore them).
    """

    name: str
    task: str  # "recognition" or "detection"
    description: str
    licence: str
    source: str = ""  # the publisher's page
    accuracy: str = ""  # as its publisher reports it
    url: str | None = None  # download (a file, or a .zip / .tar archive); None for a local entry
    member: str | None = None  # the model file inside the archive, found by its base name
    sha256: str | None = None  # pinned sha256 of the download; None: recorded at the first pull, verified at every load
    size: str = ""  # download size as published (archives: the archive)
    path: str | None = None  # a local entry's file
    embedding_size: int | None = None
    input_size: int = 112
    input_mean: float = 127.5
    input_std: float = 127.5
    channel_order: str = "RGB"
    layout: str = "NCHW"
    threshold: float | None = None  # cosine above which two faces are the same person, when known

    @property
    def kind(self) -> str:
        """"local" (a file registered here), "archive" (a member of a downloaded archive) or "file"."""
        return "local" if self.path else ("archive" if self.member else "file")

    def convention(self) -> str:
        if self.task == "detection":
            return "BGR photo, any size"
        return f"(x-{self.input_mean:g})/{self.input_std:g} {self.channel_order} {self.layout} {self.input_size}"

    def load_arguments(self) -> dict:
        """The input description as :func:`arcface.model.load_face_model` takes it."""
        return {"input_mean": self.input_mean, "input_std": self.input_std, "input_layout": self.layout.lower(),
                "bgr": self.channel_order == "BGR"}

    def validate(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise DataError(f"model name {self.name!r}: use letters, digits, '_', '-', '.' (up to 64 characters)")
        if self.task not in TASKS:
            raise DataError(f"{self.name}: --task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.channel_order not in CHANNEL_ORDERS or self.layout not in LAYOUTS:
            raise DataError(f"{self.name}: channel order must be RGB or BGR and layout NCHW or NHWC")
        if not self.input_std > 0:
            raise DataError(f"{self.name}: --input-std must be > 0, got {self.input_std}")
        if (self.url is None) == (self.path is None):
            raise DataError(f"{self.name}: an entry has either a download URL or a local path")


BUILTIN: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="yunet", task="detection", description="YuNet face detector with 5 landmarks (OpenCV Zoo, 2023mar)",
        licence="MIT", source="https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet",
        accuracy="WIDER Face val AP 0.884 easy / 0.866 medium / 0.750 hard",
        url=YUNET_URL, sha256=YUNET_SHA256, size="0.23 MB", channel_order="BGR",
    ),
    ModelEntry(
        name="buffalo_l", task="recognition", description="insightface pack buffalo_l: w600k_r50.onnx, ResNet50 on WebFace600K",
        licence=INSIGHTFACE_LICENCE, source=INSIGHTFACE_SOURCE,
        accuracy="LFW 99.83, CFP-FP 99.33, AgeDB-30 98.23, IJB-C TAR@FAR=1e-4 97.25, MR-ALL 91.25",
        url=f"{INSIGHTFACE_RELEASE}/buffalo_l.zip", member="w600k_r50.onnx", size="~289 MB zip (w600k_r50.onnx ~174 MB)",
        embedding_size=512,
    ),
    ModelEntry(
        name="buffalo_sc", task="recognition", description="insightface pack buffalo_sc: w600k_mbf.onnx, MobileFaceNet on WebFace600K",
        licence=INSIGHTFACE_LICENCE, source=INSIGHTFACE_SOURCE,
        accuracy="LFW 99.70, CFP-FP 98.00, AgeDB-30 96.58, IJB-C TAR@FAR=1e-4 95.02, MR-ALL 71.87 (as buffalo_s)",
        url=f"{INSIGHTFACE_RELEASE}/buffalo_sc.zip", member="w600k_mbf.onnx", size="~15 MB zip", embedding_size=512,
    ),
    ModelEntry(
        name="antelopev2", task="recognition", description="insightface pack antelopev2: glint360k_r100.onnx, ResNet100 on Glint360K",
        licence=INSIGHTFACE_LICENCE, source=INSIGHTFACE_SOURCE,
        accuracy="MR-ALL 90.66 (the model zoo's R100 Glint360K row)",
        url=f"{INSIGHTFACE_RELEASE}/antelopev2.zip", member="glint360k_r100.onnx", size="~361 MB zip", embedding_size=512,
    ),
)


def user_registry_path() -> Path:
    return arcface_home() / "models.json"


def _user_entries() -> dict[str, ModelEntry]:
    path = user_registry_path()
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(ModelEntry)}
        return {name: ModelEntry(**{k: v for k, v in entry.items() if k in known}) for name, entry in values["models"].items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: unreadable model registry ({error}); fix or delete it") from None


def _write_user_entries(entries: dict[str, ModelEntry]) -> None:
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"version": 1, "models": {name: asdict(entry) for name, entry in sorted(entries.items())}}
    with atomic_output(path) as handle:
        handle.write((json.dumps(document, indent=2) + "\n").encode("utf-8"))


def list_models() -> list[ModelEntry]:
    """Built-in entries, then the user's (``arcface models add``)."""
    return [*BUILTIN, *_user_entries().values()]


def get_model(name: str) -> ModelEntry:
    for entry in list_models():
        if entry.name == name:
            return entry
    raise DataError(f"no model named {name!r} (known: {', '.join(e.name for e in list_models())}; `arcface models list`)")


def find_entry_for_path(path: str | os.PathLike) -> ModelEntry | None:
    """The local entry registered for this file, so a path given directly gets its convention too."""
    target = Path(path).resolve()
    for entry in _user_entries().values():
        if entry.path and Path(entry.path).resolve() == target:
            return entry
    return None


def add_local_model(entry: ModelEntry, replace_existing: bool = False) -> ModelEntry:
    """Register a local model file under a name; returns the entry as stored (absolute path)."""
    if entry.path is None:
        raise DataError(f"{entry.name}: a local entry needs a path")
    path = Path(entry.path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"{entry.path}: model file not found")
    entry = replace(entry, path=str(path))
    entry.validate()
    if any(builtin.name == entry.name for builtin in BUILTIN):
        raise DataError(f"{entry.name} is a built-in model name; choose another name")
    entries = _user_entries()
    if entry.name in entries and not replace_existing:
        raise DataError(f"{entry.name} is already registered ({entries[entry.name].path}); remove it first or pass --replace")
    entries[entry.name] = entry
    _write_user_entries(entries)
    log.info("registered %s -> %s in %s", entry.name, path, user_registry_path())
    return entry


def remove_local_model(name: str) -> None:
    entries = _user_entries()
    if name not in entries:
        raise DataError(f"{name}: not a registered local model (built-in entries cannot be removed)")
    del entries[name]
    _write_user_entries(entries)
