"""Face images for evaluation: read, align (on the fly, with YuNet or given landmarks) or crop, normalize.

How each image became a 112x112 face is part of the result (a center crop loses several points of
LFW accuracy against 5-point alignment), so every item carries a :class:`Prep` code and the
evaluation report counts them.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.align import ALIGNED_SIZE, FaceAligner, FaceDetector, warp_face
from ..data.datasets import FaceTransform
from ..data.errors import DataError
from ..input_spec import DEFAULT_INPUT_SPEC, InputSpec

__all__ = ["ALIGN_MODES", "Prep", "FaceImages", "center_crop"]

logger = logging.getLogger(__name__)

ALIGN_MODES = ("auto", "yunet", "none", "center")


class Prep(enum.IntEnum):
    """How one image was turned into the network's input."""

    PRE_ALIGNED = 0  # already 112x112, used as is
    DETECTED = 1  # YuNet landmarks, similarity warp to the ArcFace template
    NO_FACE_CENTER = 2  # YuNet found no face: center crop instead (counted, reported)
    CENTER = 3  # center crop, as asked
    RESIZED = 4  # not 112x112 and alignment off: resized whole
    LANDMARKS = 5  # landmarks given with the protocol (IJB), similarity warp


def center_crop(image: np.ndarray, crop_size: int | None) -> np.ndarray:
    """The central ``crop_size`` square (default: half the short side), resized to 112.

    The resize is PIL's bilinear, which low-pass filters when shrinking, as the common evaluation
    scripts do (``Image.resize((112, 112), Image.BILINEAR)``); OpenCV's INTER_LINEAR does not filter
    and moves MobileFaceNet's LFW embeddings by 1 - cos ~ 1e-3.
    """
    height, width = image.shape[:2]
    side = min(height, width, crop_size) if crop_size else max(1, min(height, width) // 2)
    top, left = (height - side) // 2, (width - side) // 2
    crop = np.ascontiguousarray(image[top : top + side, left : left + side])
    return np.asarray(Image.fromarray(crop).resize((ALIGNED_SIZE, ALIGNED_SIZE), Image.BILINEAR))


class FaceImages(Dataset):
    """``dataset[i] -> ((3, 112, 112) float32 normalized by ``spec``, Prep code)`` for image files.

    Args:
        paths: image paths relative to ``root`` (or absolute).
        root: folder the paths are relative to.
        align: "auto" (112x112 images as they are, others through YuNet), "yunet" (always detect),
            "none" (use as is; resize what is not 112x112), "center" (center crop, no detector).
        detector: YuNet .onnx path, needed for "auto" (when an image is not 112x112) and "yunet".
        crop_size: side in pixels of the center crop ("center" mode and the no-face fallback).
        landmarks: (N, 5, 2) per-image landmarks (e.g. IJB's), used instead of detection.
        face_choice: which detection of a several-face image to align ("center", "score", "largest").
        spec: the model's input spec (the faces are normalized for it).
    """

    def __init__(
        self,
        paths: Sequence[str],
        root: str | os.PathLike,
        align: str = "auto",
        detector: str | os.PathLike | None = None,
        crop_size: int | None = None,
        landmarks: np.ndarray | None = None,
        face_choice: str = "center",
        spec: InputSpec = DEFAULT_INPUT_SPEC,
    ):
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
        if align == "yunet" and detector is None:
            raise DataError("alignment with YuNet needs a detector model: pass --detector PATH (a YuNet .onnx)")
        if detector is not None and not Path(detector).is_file():
            raise DataError(f"{detector}: face detector model not found")
        if landmarks is not None and np.shape(landmarks) != (len(paths), 5, 2):
            raise ValueError(f"landmarks must be ({len(paths)}, 5, 2), got {np.shape(landmarks)}")
        self.paths, self.root = list(paths), Path(root)
        self.align, self.detector, self.crop_size = align, detector, crop_size
        self.landmarks = landmarks
        self.face_choice = face_choice
        self.transform = FaceTransform(flip=0.0, spec=spec)
        self._aligner: FaceAligner | None = None  # created in each DataLoader worker (cv2 objects do not pickle)

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> np.ndarray:
        path = self.root / self.paths[index]
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise DataError(f"{path}: cannot decode image ({data.size} bytes; corrupt, truncated or not an image)")
        return image  # BGR, as the detector wants it

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, Prep]:
        if self.detector is None:
            raise DataError(
                f"an image of {image.shape[1]}x{image.shape[0]} needs alignment: pass --detector PATH (YuNet .onnx), "
                f"or --align center / --align none"
            )
        if self._aligner is None:
            self._aligner = FaceAligner(FaceDetector(self.detector), face_choice=self.face_choice)
        faces = self._aligner.align(image)
        if faces:
            return faces[0].image, Prep.DETECTED
        return center_crop(image, self.crop_size), Prep.NO_FACE_CENTER

    def face(self, index: int) -> tuple[np.ndarray, Prep]:
        """The (112, 112, 3) uint8 BGR face of image ``index`` and how it was made."""
        image = self._read(index)
        if self.landmarks is not None:
            return warp_face(image, self.landmarks[index]), Prep.LANDMARKS
        square = image.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE)
        if self.align == "center":
            return center_crop(image, self.crop_size), Prep.CENTER
        if self.align == "yunet" or (self.align == "auto" and not square):
            return self._detect(image)
        if square:
            return image, Prep.PRE_ALIGNED
        return cv2.resize(image, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_AREA), Prep.RESIZED

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        face, prep = self.face(index)
        return self.transform(cv2.cvtColor(face, cv2.COLOR_BGR2RGB)), int(prep)


def count_preps(codes: Sequence[int] | np.ndarray) -> dict[str, int]:
    """{"detected": 5749, "no_face_center": 0, ...}: only the kinds that occur."""
    values, counts = np.unique(np.asarray(codes, dtype=np.int64), return_counts=True)
    return {Prep(int(v)).name.lower(): int(c) for v, c in zip(values, counts)}
