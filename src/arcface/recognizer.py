"""Using a model on photos: :class:`FaceRecognizer` (embed, verify, search) and :class:`Gallery`.

>>> from arcface import FaceRecognizer
>>> recognizer = FaceRecognizer.load("model.onnx")   # the input spec comes with the model file
>>> score, same = recognizer.verify("a.jpg", "b.jpg")
>>> score, same = recognizer.verify(cv2.imread("a.jpg"), cv2.imread("b.jpg"), bgr=True)   # OpenCV arrays
>>> gallery = Gallery.build(recognizer, "people/")          # people/<name>/<photo>
>>> gallery.search(recognizer.embed(["query.jpg"]).embeddings, k=5)
>>> recognizer = FaceRecognizer.from_pretrained("buffalo_l")   # a registry name (or a path): its input convention applied
>>> [(face.box, face.score) for face in recognizer.detect("group.jpg")]   # every face, with its embedding

Photos are read, detected and aligned (YuNet) unless they are 112x112 aligned faces already (or
``aligned=True``); a photo without a face, unreadable, or with several faces gets a status instead of
stopping the batch. Paths and PIL images say their own channel order; a numpy array is RGB unless the
call says ``bgr=True`` (what ``cv2.imread`` returns).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data.align import ALIGNED_SIZE, ARCFACE_TEMPLATE, FaceAligner, FaceDetector, choose_face, warp_face
from .data.errors import DataError
from .eval.embed import embed_images
from .model import ModelInfo, load_face_model, load_named_model

__all__ = ["FaceRecognizer", "EmbedResult", "Face", "Gallery", "DEFAULT_THRESHOLD", "answer_of"]

logger = logging.getLogger(__name__)

# Cosine above which two faces are called the same person when the model comes without a report.
# ArcFace-family models put LFW's best threshold between about 0.2 and 0.4; pass threshold= (or a
# report from `arcface eval --out`) for a calibrated value.
DEFAULT_THRESHOLD = 0.3
# Fewer photos than this get no progress bar (it would flash by); bars are shown only on a terminal.
PROGRESS_MIN_IMAGES = 16


@dataclass
class Face:
    """One face found in a photo.

    Attributes:
        box: (4,) float64 x, y, width, height in the photo's pixels.
        landmarks: (5, 2) float64: image-left eye, image-right eye, nose tip, mouth corners (image-left first).
        score: the detector's confidence in [0, 1]; NaN for a photo given as an aligned face.
        crop: (112, 112, 3) uint8 RGB, the face aligned to the ArcFace template.
        embedding: (D,) float32, L2-normalized.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    crop: np.ndarray
    embedding: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready: box, landmarks and score (not the crop or the embedding)."""
        return {"box": [round(float(v), 2) for v in self.box], "landmarks": [[round(float(v), 2) for v in point] for point in self.landmarks],
                "score": None if np.isnan(self.score) else round(float(self.score), 4)}


def _progress_shown(progress: bool | None, count: int) -> bool:
    """Progress bars: never when asked not to or when stderr is not a terminal; by default only for many photos."""
    if progress is False or (progress is None and count < PROGRESS_MIN_IMAGES):
        return False
    return sys.stderr.isatty()


def answer_of(matches: list[tuple[str, float]], threshold: float) -> str | None:
    """The identity a search names: the best match when its cosine is above ``threshold``, else None (unknown).

    The same rule as ``verify``'s "same": score > threshold.
    """
    return matches[0][0] if matches and matches[0][1] > threshold else None


@dataclass
class EmbedResult:
    """Embeddings of a batch of photos.

    Attributes:
        embeddings: (N, D) float32, L2-normalized; NaN rows where no face could be used.
        status: per photo: "ok", "ok_several_faces" (the one nearest the center used), "no_face", "unreadable: ...".
        faces: with ``embed(..., all_faces=True)``: per photo, every face found (best score first), each
            with box, landmarks, score, aligned crop and embedding; None otherwise.
    """

    embeddings: np.ndarray
    status: list[str]
    faces: list[list[Face]] | None = None

    @property
    def ok(self) -> np.ndarray:
        return np.array([s.startswith("ok") for s in self.status], dtype=bool)


def _to_bgr(image, name: str, bgr: bool = False) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 array (RGB, or BGR when ``bgr``) -> BGR uint8; DataError when unreadable."""
    if isinstance(image, (str, os.PathLike)):
        data = np.fromfile(image, dtype=np.uint8) if Path(image).is_file() else np.zeros(0, np.uint8)
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if decoded is None:
            raise DataError(f"{image}: missing, unreadable or not an image")
        return decoded
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))[..., ::-1].copy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise DataError(f"{name}: expected an (H, W, 3) uint8 {'BGR' if bgr else 'RGB'} array, got {array.dtype} {array.shape}")
    return array.copy() if bgr else array[..., ::-1].copy()


class FaceRecognizer:
    """A face model plus the steps around it: read, detect + align, flip-test embed, compare.

    Args:
        model, info: from :func:`arcface.model.load_face_model`.
        detector: YuNet .onnx (needed for photos that are not aligned 112x112 faces).
        threshold: cosine above which ``verify`` says "same"; default: the report's, else DEFAULT_THRESHOLD.
        device: "cpu" or "cuda" for PyTorch models.
    """

    def __init__(self, model: torch.nn.Module, info: ModelInfo, detector: str | os.PathLike | None = None,
                 threshold: float | None = None, device: str = "cpu", batch_size: int = 32, flip_test: bool = True):
        self.model, self.info = model, info
        self.device = "cpu" if info.kind == "onnx" else device
        if info.kind != "onnx":
            self.model = model.to(self.device)
        self.detector = str(detector) if detector else None
        self._aligner: FaceAligner | None = None
        self.batch_size, self.flip_test = batch_size, flip_test
        self.threshold = float(threshold) if threshold is not None else self._report_threshold()
        self.entry = None  # the registry entry, when made by from_pretrained with a name (or a registered file)

    @classmethod
    def load(cls, path: str | os.PathLike, *, arch: str | None = None, input_mean: float | None = None, input_std: float | None = None,
             input_layout: str = "auto", bgr: bool | None = None, **kwargs) -> "FaceRecognizer":
        """From a checkpoint, run folder, insightface .pth (``arch``) or ONNX model.

        ``input_mean``, ``input_std``, ``input_layout``, ``bgr`` describe an ONNX model's input when its file
        does not (see :func:`arcface.model.load_face_model`); a model exported here carries them.
        """
        model, info = load_face_model(path, architecture=arch, input_mean=input_mean, input_std=input_std,
                                      input_layout=input_layout, bgr=bgr)
        return cls(model, info, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, download: bool = True, detector: str | os.PathLike | None = "auto",
                        arch: str | None = None, input_mean: float | None = None, input_std: float | None = None,
                        input_layout: str | None = None, bgr: bool | None = None, threshold: float | None = None,
                        progress: bool | None = None, **kwargs) -> "FaceRecognizer":
        """A registry name (``arcface models list``) or a model path, with the entry's input convention applied.

        Args:
            download: pull a registry model that is not in the model home yet (``$ARCFACE_HOME``).
            detector: "auto": the YuNet detector found by :func:`arcface.home.find_detector` (pulled
                into the home when absent and ``download``); a path; or None for aligned faces only.
            input_mean, input_std, input_layout, bgr: override the entry's input convention.
            threshold: override the entry's verification threshold (else a report beside the model,
                else DEFAULT_THRESHOLD).
        """
        from .home import find_detector
        from .pretrained import pull

        model, info, entry = load_named_model(name_or_path, download=download, progress=progress, architecture=arch,
                                              input_mean=input_mean, input_std=input_std, input_layout=input_layout, bgr=bgr)
        if isinstance(detector, str) and detector == "auto":
            detector = find_detector(None)
            if detector is None and download:
                try:
                    detector = str(pull("yunet", progress=progress))
                except DataError as error:  # aligned faces need no detector: say so, and go on
                    logger.warning("no face detector (%s); only aligned 112x112 faces can be used", error)
        if threshold is None and entry is not None:
            threshold = entry.threshold
        recognizer = cls(model, info, detector=detector, threshold=threshold, **kwargs)
        recognizer.entry = entry
        return recognizer

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> "FaceRecognizer":
        return cls.load(path, **kwargs)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, input_mean: float | None = None, input_std: float | None = None, **kwargs) -> "FaceRecognizer":
        return cls.load(path, input_mean=input_mean, input_std=input_std, **kwargs)

    def _report_threshold(self) -> float:
        """The threshold of an ``arcface eval --out`` report saved as ``<model>.json`` beside the model."""
        report = Path(self.info.path).with_suffix(".json")
        if report.is_file():
            try:
                values = json.loads(report.read_text(encoding="utf-8"))
                if values.get("metric", "cosine") == "cosine" and isinstance(values.get("threshold"), (int, float)):
                    logger.info("verification threshold %.4f from %s", values["threshold"], report)
                    return float(values["threshold"])
            except (OSError, ValueError):
                logger.warning("ignoring unreadable report %s", report)
        return DEFAULT_THRESHOLD

    def _face(self, image, name: str, aligned: bool | None, bgr_array: bool = False) -> tuple[np.ndarray | None, str]:
        try:
            bgr = _to_bgr(image, name, bgr_array)
        except DataError as error:
            return None, f"unreadable: {error}"
        if aligned or (aligned is None and bgr.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE)):
            if bgr.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
                bgr = cv2.resize(bgr, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_AREA)
            return bgr, "ok"
        detections = self._face_detector(name, bgr).detect(bgr)
        if not detections:
            return None, "no_face"
        face = self._aligner.warp(bgr, detections)[0].image
        return face, "ok" if len(detections) == 1 else "ok_several_faces"

    def _face_detector(self, name: str, bgr: np.ndarray) -> FaceDetector:
        if self.detector is None:
            raise DataError(f"{name}: a {bgr.shape[1]}x{bgr.shape[0]} photo needs face detection and no YuNet detector was found: "
                            "run `arcface models pull yunet` or pass detector=PATH; photos that are aligned 112x112 faces "
                            "need none: pass aligned=True")
        if self._aligner is None:
            self._aligner = FaceAligner(FaceDetector(self.detector))
        return self._aligner.detector

    def embed(self, images, aligned: bool | None = None, bgr: bool = False, *, all_faces: bool = False,
              progress: bool | None = None) -> EmbedResult:
        """Embed photos; never stops on a bad photo.

        Args:
            images: one or a list of: paths, PIL images, (H, W, 3) uint8 arrays.
            aligned: the photos are aligned 112x112 faces (None: decide by size).
            bgr: numpy arrays are BGR (``cv2.imread``); default RGB. Paths and PIL images ignore it.
            all_faces: also return every face of every photo (``result.faces``); the embeddings
                stay one row per photo (the face nearest the center).
            progress: a progress bar (on a terminal); None: for 16 photos or more.
        """
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if all_faces:
            return self._embed_every_face(images, aligned, bgr, progress)
        faces, status = [], []
        for index, image in enumerate(tqdm(images, desc="read + align", unit="photo", disable=not _progress_shown(progress, len(images)))):
            face, state = self._face(image, str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}", aligned, bgr)
            faces.append(face)
            status.append(state)
        result = np.full((len(images), self.info.embedding_size), np.nan, dtype=np.float32)
        usable = [i for i, face in enumerate(faces) if face is not None]
        if usable:
            spec = self.info.spec
            batch = torch.stack([spec.normalize(torch.from_numpy(cv2.cvtColor(faces[i], cv2.COLOR_BGR2RGB)).permute(2, 0, 1))
                                 for i in usable])
            result[usable] = embed_images(self.model, batch, batch_size=self.batch_size, flip_test=self.flip_test, device=self.device,
                                          progress=_progress_shown(progress, len(usable)))
        for name, state in zip(images, status):
            if not state.startswith("ok") or state == "ok_several_faces":
                logger.info("%s: %s", name if isinstance(name, (str, os.PathLike)) else "image", state)
        return EmbedResult(result, status)

    def _embed_every_face(self, images: list, aligned: bool | None, bgr_arrays: bool, progress: bool | None) -> EmbedResult:
        """``embed(..., all_faces=True)``: detect every face, align each, embed them all in one batch."""
        status: list[str] = []
        found: list[list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]] = []  # per photo: (box, landmarks, score, BGR crop)
        chosen: list[int | None] = []
        for index, image in enumerate(tqdm(images, desc="detect + align", unit="photo", disable=not _progress_shown(progress, len(images)))):
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"
            try:
                bgr = _to_bgr(image, name, bgr_arrays)
            except DataError as error:
                status.append(f"unreadable: {error}")
                found.append([])
                chosen.append(None)
                continue
            if aligned or (aligned is None and bgr.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE)):
                # The photo is the face: its box is the whole image, its landmarks the template's.
                height, width = bgr.shape[:2]
                crop = bgr if (height, width) == (ALIGNED_SIZE, ALIGNED_SIZE) else cv2.resize(bgr, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_AREA)
                landmarks = ARCFACE_TEMPLATE * np.array([width / ALIGNED_SIZE, height / ALIGNED_SIZE])
                found.append([(np.array([0.0, 0.0, width, height]), landmarks, float("nan"), crop)])
                chosen.append(0)
                status.append("ok")
                continue
            detections = self._face_detector(name, bgr).detect(bgr)
            found.append([(d.box, d.landmarks, d.score, warp_face(bgr, d.landmarks)) for d in detections])
            best = choose_face(detections, bgr.shape) if detections else None  # the rule embed uses for one face a photo
            chosen.append(next(i for i, d in enumerate(detections) if d is best) if detections else None)
            status.append("no_face" if not detections else ("ok" if len(detections) == 1 else "ok_several_faces"))
        crops = [Image.fromarray(crop[..., ::-1].copy()) for faces in found for *_, crop in faces]  # RGB PIL: unambiguous input
        vectors = self.embed(crops, aligned=True, progress=progress).embeddings if crops else np.zeros((0, self.info.embedding_size), np.float32)
        result = np.full((len(images), self.info.embedding_size), np.nan, dtype=np.float32)
        per_photo, start = [], 0
        for index, faces in enumerate(found):
            per_photo.append([Face(np.asarray(box, np.float64), np.asarray(points, np.float64), float(score), crop[..., ::-1].copy(),
                                   vectors[start + k]) for k, (box, points, score, crop) in enumerate(faces)])
            if chosen[index] is not None:
                result[index] = vectors[start + chosen[index]]
            start += len(faces)
        return EmbedResult(result, status, per_photo)

    def detect(self, photo, aligned: bool | None = None, bgr: bool = False) -> list[Face]:
        """Every face in one photo (best detector score first), each aligned and embedded; [] when none.

        Args:
            photo: a path, PIL image or (H, W, 3) uint8 array (RGB, or BGR with ``bgr=True``).
        """
        result = self.embed([photo], aligned, bgr, all_faces=True, progress=False)
        if result.status[0].startswith("unreadable"):
            raise DataError(result.status[0].split(": ", 1)[1])
        return result.faces[0]

    def identify(self, query, gallery: "Gallery", k: int = 5, aligned: bool | None = None,
                 threshold: float | None = None, bgr: bool = False) -> tuple[str | None, list[tuple[str, float]]]:
        """(the identity, or None for unknown, and the ``k`` best matches) for one photo.

        Args:
            threshold: cosine the best match must exceed to be named (default: ``self.threshold``).
            bgr: as in :meth:`embed`.
        """
        matches = self.search(query, gallery, k, aligned, bgr)
        return answer_of(matches, self.threshold if threshold is None else threshold), matches

    def verify(self, a, b, aligned: bool | None = None, bgr: bool = False) -> tuple[float, bool]:
        """(cosine, same) of two photos; DataError when either has no usable face. ``bgr``: as in :meth:`embed`."""
        result = self.embed([a, b], aligned, bgr)
        for image, state in zip((a, b), result.status):
            if not state.startswith("ok"):
                raise DataError(f"{image if isinstance(image, (str, os.PathLike)) else 'image'}: {state}")
        score = float(np.dot(result.embeddings[0], result.embeddings[1]))
        return score, score > self.threshold

    def search(self, query, gallery: "Gallery", k: int = 5, aligned: bool | None = None, bgr: bool = False) -> list[tuple[str, float]]:
        """The ``k`` gallery identities nearest one photo, best first. ``bgr``: as in :meth:`embed`."""
        result = self.embed([query], aligned, bgr)
        if not result.ok[0]:
            raise DataError(f"{query if isinstance(query, (str, os.PathLike)) else 'query'}: {result.status[0]}")
        return gallery.search(result.embeddings, k)[0]


class Gallery:
    """Named, L2-normalized embeddings with brute-force cosine search (numpy).

    Attributes:
        names: (G,) identity of each entry; embeddings: (G, D) float32; paths: (G,) source photo.
    """

    def __init__(self, names: list[str], embeddings: np.ndarray, paths: list[str] | None = None):
        if len(names) != len(embeddings):
            raise ValueError(f"{len(names)} names for {len(embeddings)} embeddings")
        self.names, self.embeddings = list(names), np.ascontiguousarray(embeddings, dtype=np.float32)
        self.paths = list(paths) if paths is not None else [""] * len(names)

    @classmethod
    def build(cls, recognizer: FaceRecognizer, folder: str | os.PathLike, aligned: bool | None = None,
              progress: bool | None = None) -> "Gallery":
        """Every photo of ``folder/<identity>/`` (photos without a usable face are skipped and logged).

        Args:
            progress: a progress bar on a terminal (None: for 16 photos or more).
        """
        from .data.align_job import list_images

        root = Path(folder)
        if not root.is_dir():
            raise DataError(f"{root}: gallery folder not found")
        photos = [p for p in list_images(root) if len(Path(p).parts) >= 2]
        if not photos:
            raise DataError(f"{root}: no photos in identity sub-folders (expected {root}/<identity>/<photo>)")
        result = recognizer.embed([str(root / p) for p in photos], aligned, progress=progress)
        keep = result.ok
        skipped = [f"{p} ({s})" for p, s, k in zip(photos, result.status, keep) if not k]
        if skipped:
            logger.warning("%d photo(s) left out of the gallery: %s", len(skipped), ", ".join(skipped[:5]))
        return cls([Path(p).parts[0] for p, k in zip(photos, keep) if k], result.embeddings[keep], [p for p, k in zip(photos, keep) if k])

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(temporary, names=np.array(self.names, dtype=str), embeddings=self.embeddings, paths=np.array(self.paths, dtype=str))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Gallery":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: gallery file not found (build one with `arcface gallery build DIR --out {path.name}`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls([str(n) for n in data["names"]], data["embeddings"], [str(p) for p in data["paths"]])
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"{path}: not a gallery file ({error})") from None

    def search(self, queries: np.ndarray, k: int = 5, use_faiss: bool | None = None) -> list[list[tuple[str, float]]]:
        """Per query row, the ``k`` best identities (an identity's score: its best entry), best first.

        Args:
            use_faiss: None: FAISS (exact inner-product index) when installed, else numpy; True/False to force.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"queries must be (Q, {self.embeddings.shape[1]}), got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        faiss = _faiss() if use_faiss is not False else None
        if use_faiss and faiss is None:
            raise ImportError("use_faiss=True but faiss is not installed: pip install faiss-cpu")
        ranked = self._ranked_faiss(faiss, queries, k) if faiss is not None else self._ranked_numpy(queries)
        results = []
        for indices, scores in ranked:
            best: dict[str, float] = {}
            for index, score in zip(indices, scores):
                name = self.names[index]
                if name not in best:
                    best[name] = float(score)
                    if len(best) == k:
                        break
            results.append(list(best.items()))
        return results

    def identify(self, queries: np.ndarray, threshold: float, k: int = 5) -> list[tuple[str | None, list[tuple[str, float]]]]:
        """Per query row: (the identity, or None when the best cosine is not above ``threshold``, the k best matches)."""
        return [(answer_of(matches, threshold), matches) for matches in self.search(queries, k)]

    def _ranked_numpy(self, queries: np.ndarray):
        for row in queries @ self.embeddings.T:
            order = np.argsort(-row, kind="stable")
            yield order, row[order]

    def _ranked_faiss(self, faiss, queries: np.ndarray, k: int):
        """Nearest entries by an exact inner-product index, widened until k identities are covered."""
        index = faiss.IndexFlatIP(self.embeddings.shape[1])
        index.add(self.embeddings)
        distinct = len(set(self.names))
        for query in queries:
            depth = min(len(self.names), 4 * k)
            while True:
                scores, indices = index.search(query[None], depth)
                found = {self.names[i] for i in indices[0] if i >= 0}
                if len(found) >= min(k, distinct) or depth == len(self.names):
                    break
                depth = min(len(self.names), depth * 4)
            keep = indices[0] >= 0
            yield indices[0][keep], scores[0][keep]


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss
