"""Face detection (YuNet, through OpenCV) and 5-point alignment to the 112x112 ArcFace template.

Alignment is a similarity transform (rotation, uniform scale, translation) fitted in the least-squares
sense (Umeyama's closed form, as insightface's ``norm_crop`` does through scikit-image) from the five
detected landmarks onto the standard template, then a bilinear warp. Images are NumPy uint8 arrays in
OpenCV's BGR order unless said otherwise; the channel order is passed through unchanged by the warp.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..input_spec import FACE_SIZE
from .errors import DataError

__all__ = [
    "ARCFACE_TEMPLATE",
    "ALIGNED_SIZE",
    "Detection",
    "FaceDetector",
    "umeyama_similarity",
    "warp_face",
    "center_crop_face",
    "choose_face",
    "FACE_CHOICES",
    "AlignedFace",
    "FaceAligner",
]

log = logging.getLogger(__name__)

ALIGNED_SIZE = FACE_SIZE
# Where the eyes, nose tip and mouth corners go in a 112x112 crop (image-left eye first).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Detection:
    """One detected face: box (x, y, w, h), landmarks (5, 2) in template order, confidence score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float


def umeyama_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping source points onto target points.

    Args:
        source, target: (N, 2) point sets, N >= 2.

    Returns:
        (2, 3) matrix M with ``target ~= M[:, :2] @ source + M[:, 2]`` (a rotation times a uniform
        scale, no reflection), as cv2.warpAffine expects.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centered, target_centered = source - source_mean, target - target_mean
    covariance = target_centered.T @ source_centered / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1.0
    rotation = u @ reflection @ vt
    source_variance = (source_centered**2).sum() / len(source)
    scale = (singular * np.diag(reflection)).sum() / source_variance if source_variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def warp_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp a face so its 5 landmarks land on the ArcFace template.

    Args:
        image: (H, W, 3) uint8, any channel order (kept).
        landmarks: (5, 2) pixel coordinates: image-left eye, image-right eye, nose tip,
            image-left mouth corner, image-right mouth corner.
        size: output side; the template is scaled from 112.

    Returns:
        (size, size, 3) uint8 aligned face.
    """
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    matrix = umeyama_similarity(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def center_crop_face(image: np.ndarray, fraction: float = 0.5, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Fallback without landmarks: the central square of side ``fraction * min(H, W)``, resized.

    The default 0.5 matches the scale of the aligned crops on 250x250 LFW images (the face spans
    about half the image there); it is a guess for other sources.
    """
    height, width = image.shape[:2]
    side = max(1, int(round(fraction * min(height, width))))
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


FACE_CHOICES = ("center", "score", "largest")


def choose_face(detections: list[Detection], image_shape: tuple[int, ...], rule: str = "center") -> Detection:
    """The face to keep from an image's detections.

    Rules: "center" (default): box center nearest the image center, ties to the higher score, right
    for datasets whose subject is centered (LFW, most crawled face crops); "score": the most
    confident detection; "largest": the largest box.
    """
    if not detections:
        raise ValueError("no detections to choose from")
    if rule == "score":
        return max(detections, key=lambda detection: detection.score)
    if rule == "largest":
        return max(detections, key=lambda detection: (float(detection.box[2] * detection.box[3]), detection.score))
    if rule != "center":
        raise ValueError(f"face choice must be one of {', '.join(FACE_CHOICES)}, got {rule!r}")
    center = np.array([image_shape[1] / 2.0, image_shape[0] / 2.0])

    def distance(detection: Detection) -> tuple[float, float]:
        x, y, w, h = detection.box
        return float(np.hypot(x + w / 2 - center[0], y + h / 2 - center[1])), -detection.score

    return min(detections, key=distance)


class FaceDetector:
    """YuNet face detector with 5 landmarks, run by OpenCV's ``cv2.FaceDetectorYN``.

    Args:
        model_path: the YuNet ONNX file (OpenCV model zoo's face_detection_yunet_*.onnx).
        score_threshold: minimum confidence of a detection.
        nms_threshold: IoU threshold of non-maximum suppression.
        max_side: images larger than this are downscaled for detection (landmarks are mapped back).
    """

    def __init__(self, model_path: str | Path, score_threshold: float = 0.6, nms_threshold: float = 0.3, max_side: int = 640):
        path = Path(model_path)
        if not path.is_file():
            raise DataError(f"{path}: face detector model not found (pass --detector PATH to the YuNet .onnx file)")
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a harmless backend warning
        try:
            self._detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, 5000)
        except cv2.error as error:
            raise DataError(f"{path}: OpenCV cannot load this face detector model: {error}") from error
        self.model_path = path
        self.score_threshold = score_threshold
        self.max_side = max_side

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """All faces in a (H, W, 3) uint8 BGR image, best score first."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) BGR image, got shape {image_bgr.shape}")
        height, width = image_bgr.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        resized = image_bgr if scale == 1.0 else cv2.resize(image_bgr, (round(width * scale), round(height * scale)))
        self._detector.setInputSize((resized.shape[1], resized.shape[0]))
        _, rows = self._detector.detect(np.ascontiguousarray(resized))
        if rows is None:
            return []
        detections = [
            Detection(box=row[:4] / scale, landmarks=row[4:14].reshape(5, 2) / scale, score=float(row[14]))
            for row in rows.astype(np.float64)
        ]
        return sorted(detections, key=lambda detection: -detection.score)


@dataclass(frozen=True)
class AlignedFace:
    """A (112, 112, 3) uint8 aligned crop (input channel order) and the detection it came from."""

    image: np.ndarray
    detection: Detection


class FaceAligner:
    """Detect and align faces in one call, for inference and for the ``data align`` command.

    Args:
        detector: a FaceDetector, or the path of the YuNet model.
        size: side of the aligned crop.
    """

    def __init__(self, detector: FaceDetector | str | Path, size: int = ALIGNED_SIZE, face_choice: str = "center"):
        if face_choice not in FACE_CHOICES:
            raise ValueError(f"face choice must be one of {', '.join(FACE_CHOICES)}, got {face_choice!r}")
        self.detector = detector if isinstance(detector, FaceDetector) else FaceDetector(detector)
        self.size = size
        self.face_choice = face_choice

    def align(self, image_bgr: np.ndarray, all_faces: bool = False) -> list[AlignedFace]:
        """Aligned faces of a BGR image: the one nearest the center, or all (best score first).

        Returns an empty list when no face is found.
        """
        return self.warp(image_bgr, self.detector.detect(image_bgr), all_faces)

    def warp(self, image_bgr: np.ndarray, detections: list[Detection], all_faces: bool = False) -> list[AlignedFace]:
        """Aligned crops for detections already made on this image (see ``align``)."""
        if not detections:
            return []
        chosen = detections if all_faces else [choose_face(detections, image_bgr.shape, self.face_choice)]
        return [AlignedFace(warp_face(image_bgr, d.landmarks, self.size), d) for d in chosen]
