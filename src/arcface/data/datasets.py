"""Training datasets with one interface: ``dataset[i] -> (image (3, 112, 112) float32, label int)``.

Sources: an image folder (``root/<identity>/<image>``), a list file (``path label`` per line), a
RecordIO ``.rec`` (insightface or plain im2rec layout), or synthetic random images. Decoding uses
OpenCV (faster than PIL for small JPEGs); images are returned RGB, normalized as (x/255 - 0.5)/0.5.

A corrupt image, or one that is not the aligned 112x112 crop the backbones take (a 1x1 thumbnail, a
10000x10000 photo: its size is read from the header, before decoding), raises :class:`DataError`
naming the file (or record key). With ``skip_bad=True`` the dataset logs it, counts it in
``skipped``, and returns the next readable sample instead, so a long run is not stopped by one bad
file and nothing is dropped silently. Labels are integers in 0..2**24-1 (float32 holds them
exactly, as insightface's .rec stores them); ids without images are warned about, since the head
still gives each a class center.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..input_spec import DEFAULT_INPUT_SPEC, InputSpec
from .errors import DataError
from .recordio import _FLOAT32_EXACT

__all__ = [
    "FaceTransform",
    "decode_image",
    "FaceDataset",
    "ImageFolderDataset",
    "ListDataset",
    "RecordDataset",
    "SyntheticDataset",
    "build_dataset",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "MAX_CLASSES",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Skipping a bad sample tries the following ones; this many bad samples in a row is not "a few".
_MAX_CONSECUTIVE_BAD = 100
# (height, width) of the aligned faces every backbone takes (arcface.backbones.common.INPUT_SIZE).
IMAGE_SIZE = (112, 112)
# Class ids are below this: float32 .rec labels are exact up to it, and a head of that many centers
# is already 32 GB at 512-D.
MAX_CLASSES = _FLOAT32_EXACT
_LABEL = re.compile(r"[0-9]+")


def encoded_size(data: bytes, source: str) -> tuple[int, int] | None:
    """(height, width) from an encoded image's header without decoding it; None when PIL cannot tell."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        raise DataError(f"{source}: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return height, width


def _check_size(height: int, width: int, expected: tuple[int, int], source: str) -> None:
    if (height, width) != tuple(expected):
        raise DataError(
            f"{source}: image is {width}x{height}, training takes aligned {expected[1]}x{expected[0]} faces "
            f"(align and crop with `arcface data align`, or remove the file)"
        )


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB. Raises DataError naming ``source``."""
    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR) if array.size else None
    if image is None:
        raise DataError(f"{source}: cannot decode image ({len(data)} bytes; corrupt, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class FaceTransform:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) model input, with a random horizontal flip.

    Args:
        flip: probability of a horizontal flip (0.5 for training, 0 for evaluation).
        extra: optional callable applied to the uint8 RGB image first (extra augmentation; off).
        spec: the model's input spec (default: ours, ``(x - 127.5) / 127.5`` RGB, i.e. [-1, 1]).
    """

    flip: float = 0.5
    extra: Callable[[np.ndarray], np.ndarray] | None = None
    spec: InputSpec = DEFAULT_INPUT_SPEC

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self.extra is not None:
            image = self.extra(image)
        if self.flip > 0 and torch.rand(()) < self.flip:
            image = image[:, ::-1]
        return self.spec.normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


class FaceDataset(Dataset):
    """Base: subclasses give ``__len__``, ``labels`` and ``_encoded(index) -> (bytes, source name)``."""

    labels: list[int]

    def __init__(self, transform: Callable[[np.ndarray], torch.Tensor] | None = None, skip_bad: bool = False,
                 image_size: tuple[int, int] | None = IMAGE_SIZE):
        """``image_size``: the (height, width) every image must have (DataError naming the file otherwise);
        None accepts any size (then the transform must make them equal for batching)."""
        self.transform = transform if transform is not None else FaceTransform()
        self.skip_bad = skip_bad
        self.image_size = tuple(image_size) if image_size is not None else None
        self.skipped = 0

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 0

    def _encoded(self, index: int) -> tuple[bytes, str]:
        raise NotImplementedError

    def encoded(self, index: int) -> bytes:
        """Sample ``index``'s image file bytes as stored (JPEG/PNG), not decoded."""
        return self._encoded(index)[0]

    def _warn_label_gaps(self, source: str) -> None:
        used = len(set(self.labels))
        if used < self.num_classes:
            missing = sorted(set(range(self.num_classes)) - set(self.labels))
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            log.warning("%s: %d class ids have no image (%s) among 0..%d; the head still gets a center for each: "
                        "renumber the labels to 0..C-1 to train only the %d used", source, len(missing), shown, self.num_classes - 1, used)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        data, source = self._encoded(index)
        if self.image_size is not None and (size := encoded_size(data, source)) is not None:
            _check_size(*size, self.image_size, source)  # before decoding: a huge image is refused, not decoded
        image = decode_image(data, source)
        if self.image_size is not None:
            _check_size(*image.shape[:2], self.image_size, source)
        return self.transform(image), self.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not self.skip_bad:
            return self._load(index)
        for attempt in range(_MAX_CONSECUTIVE_BAD):
            try:
                return self._load((index + attempt) % len(self))
            except (DataError, OSError) as error:
                self.skipped += 1
                log.warning("skipping bad sample (%d skipped so far in this process): %s", self.skipped, error)
        raise DataError(f"{_MAX_CONSECUTIVE_BAD} bad samples in a row from index {index}; the dataset looks broken")


class _FileDataset(FaceDataset):
    """Samples are image files on disk: ``paths`` and ``labels``."""

    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def _encoded(self, index: int) -> tuple[bytes, str]:
        path = self.paths[index]
        try:
            return path.read_bytes(), str(path)
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror})") from error


class ListDataset(_FileDataset):
    """``path label`` per line (paths relative to ``root``, default: the list file's folder).

    Blank lines and lines starting with ``#`` are ignored. Labels must be integers >= 0.
    """

    def __init__(self, list_file: str | Path, root: str | Path | None = None, **kwargs):
        super().__init__(**kwargs)
        list_file = Path(list_file)
        if not list_file.is_file():
            raise DataError(f"{list_file}: list file not found")
        self.root = Path(root) if root is not None else list_file.parent
        self.paths, self.labels = [], []
        for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path, _, label = line.rpartition("\t" if "\t" in line else " ")
            if not path.strip() or not _LABEL.fullmatch(label.strip()):
                raise DataError(f"{list_file}:{number}: expected 'path label' with an integer label >= 0, got {line!r}")
            if int(label) >= MAX_CLASSES:
                raise DataError(f"{list_file}:{number}: label {label.strip()} is not a class id (0..{MAX_CLASSES - 1}); labels number the classes 0..C-1")
            self.paths.append(self.root / path.strip())
            self.labels.append(int(label))
        if not self.paths:
            raise DataError(f"{list_file}: no samples listed")
        self._warn_label_gaps(str(list_file))


class ImageFolderDataset(_FileDataset):
    """``root/<identity>/<image>``: identities sorted by name get labels 0..C-1.

    Non-image files are ignored (and counted in the log); an identity folder without images is a
    DataError naming it, since it would shift every later label.
    """

    def __init__(self, root: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        identities = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not identities:
            raise DataError(f"{self.root}: no identity sub-folders (expected root/<identity>/<image>)")
        self.identities = [p.name for p in identities]
        self.paths, self.labels, ignored = [], [], 0
        for label, folder in enumerate(identities):
            files = sorted(p for p in folder.iterdir() if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            ignored += len(files) - len(images)
            if not images:
                raise DataError(f"{folder}: identity folder has no images")
            self.paths.extend(images)
            self.labels.extend([label] * len(images))
        if ignored:
            log.info("%s: ignored %d non-image files", self.root, ignored)


class RecordDataset(FaceDataset):
    """A RecordIO ``.rec`` (+ ``.idx``), insightface's layout or plain im2rec; safe in DataLoader workers."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, **kwargs):
        super().__init__(**kwargs)
        from .face_records import FaceRecordFile

        self.records = FaceRecordFile(rec_path, idx_path)
        self.keys = list(self.records.image_keys)
        self.labels = list(self.records.labels)
        self._num_classes = self.records.num_classes
        self._warn_label_gaps(str(self.records.rec_path))

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def __len__(self) -> int:
        return len(self.keys)

    def _encoded(self, index: int) -> tuple[bytes, str]:
        key = self.keys[index]
        return self.records.image_bytes(key), f"{self.records.rec_path}: record key {key}"


class SyntheticDataset(Dataset):
    """Random images for smoke and speed tests: sample i has label i % num_classes.

    Each sample is generated from its index, so it is the same in every epoch and every worker.
    """

    def __init__(self, num_samples: int = 1024, num_classes: int = 16, image_size: int = 112, seed: int = 0):
        if num_samples < 1 or num_classes < 1:
            raise ValueError(f"num_samples and num_classes must be >= 1, got {num_samples}, {num_classes}")
        self.num_samples, self.num_classes, self.image_size, self.seed = num_samples, num_classes, image_size, seed
        self.labels = [i % num_classes for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.rand(3, self.image_size, self.image_size, generator=generator).mul_(2.0).sub_(1.0)
        return image, self.labels[index]


def build_dataset(source: str | Path, **kwargs) -> Dataset:
    """A dataset from a path: ``.rec`` -> RecordDataset, ``.txt``/``.lst`` -> ListDataset, folder ->
    ImageFolderDataset, ``synthetic:N:C`` -> SyntheticDataset(N samples, C classes)."""
    text = str(source)
    if text.startswith("synthetic:"):
        parts = text.split(":")
        try:
            num_samples, num_classes = int(parts[1]), int(parts[2])
        except (IndexError, ValueError) as error:
            raise DataError(f"{text}: expected synthetic:NUM_SAMPLES:NUM_CLASSES") from error
        return SyntheticDataset(num_samples, num_classes)
    path = Path(source)
    if path.suffix == ".rec":
        return RecordDataset(path, **kwargs)
    if path.suffix in {".txt", ".lst"}:
        return ListDataset(path, **kwargs)
    if path.is_dir():
        return ImageFolderDataset(path, **kwargs)
    raise DataError(f"{path}: not found, or not a .rec file, a list file (.txt/.lst) or an image folder")
