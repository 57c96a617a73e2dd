"""IJB-B / IJB-C 1:1 template verification, in the layout of insightface's published IJB evaluation.

The released meta files (``IJBC`` shown; IJB-B uses the ``ijbb_`` prefix) sit in ``<root>/meta/``
(or directly in ``<root>``), the aligned-ready face crops in ``<root>/loose_crop/``:

* ``ijbc_face_tid_mid.txt``: one line per image, ``image_name template_id media_id``.
* ``ijbc_template_pair_label.txt``: one line per pair, ``template1 template2 label`` (1 = same person).
* ``ijbc_name_5pts_score.txt`` (optional here): one line per image, in the order of the first file,
  ``image_name x1 y1 ... x5 y5 detector_score``: the five landmarks to align the loose crop with and
  the face detector's confidence.

A template is a set of images (stills and video frames) of one subject; a media is one still or one
video. The protocol compares templates, not images: within a template the embeddings of one media are
averaged (so a 300-frame video does not outweigh a photo), the media features are summed and the sum
is L2-normalized; a pair's score is the cosine of its two template features. With
``use_detector_score`` each image's embedding is first multiplied by its detector score, as
insightface's evaluation does by default.

IJB-C has 469,375 images, 23,124 templates and 15,658,489 pairs, so pooling is a sorted segment sum
and pair scores are computed in chunks; nothing here builds a (P, D) array.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.errors import DataError
from .verification import FAR_TARGETS, eer, rate_key, roc, tar_at_far

__all__ = [
    "IJBMeta",
    "IJBResult",
    "read_ijb_meta",
    "template_features",
    "pair_scores",
    "verify_templates",
    "ijb_verification",
]

logger = logging.getLogger(__name__)

IJB_NAMES = ("IJBB", "IJBC")

# Rows gathered at once when pooling, and float64 values per gathered array when scoring pairs:
# 2**24 values = 128 MiB, so a chunk of 512-d pairs is 32768 pairs (two gathered arrays, 256 MiB).
_POOL_ROWS = 65536
_PAIR_VALUES = 2**24

# How many offending ids an error message quotes before it only gives the count.
_SHOWN = 5


# ------------------------------------------------------------------------------------------ meta


@dataclass(frozen=True, eq=False)  # arrays inside: == would be ambiguous
class IJBMeta:
    """The IJB-B / IJB-C meta files, as :func:`read_ijb_meta` read them.

    Attributes:
        name: "IJBB" or "IJBC".
        root: the dataset folder given to :func:`read_ijb_meta`.
        image_names: (N,) str, file names in ``loose_crop/`` (e.g. "1.jpg"), in file order.
        templates: (N,) int64 template id of each image.
        medias: (N,) int64 media id of each image.
        pairs: (P, 2) int64 template ids of each pair.
        labels: (P,) bool, True where the pair is one subject.
        landmarks: (N, 5, 2) float32 five (x, y) points in loose-crop pixels (eyes, nose, mouth
            corners), or None when the landmark file is absent.
        scores: (N,) float32 detector score of each image, or None with the landmarks.
    """

    name: str
    root: Path
    image_names: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    pairs: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)
    scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    @property
    def num_pairs(self) -> int:
        return len(self.labels)

    @property
    def num_templates(self) -> int:
        return len(np.unique(self.templates))

    @property
    def image_dir(self) -> Path:
        """Where the crops are: ``<root>/loose_crop``."""
        return self.root / "loose_crop"

    def image_paths(self) -> list[Path]:
        """(N,) paths of the crops, in the order of every per-image array."""
        return [self.image_dir / name for name in self.image_names]


def _meta_file(root: Path, filename: str, required: bool = True) -> Path | None:
    """``root/meta/filename`` or ``root/filename``, whichever exists, else DataError (or None)."""
    for candidate in (root / "meta" / filename, root / filename):
        if candidate.is_file():
            return candidate
    if not required:
        return None
    raise DataError(
        f"{root / 'meta' / filename}: no such file (nor {root / filename}); give the IJB folder that "
        "holds meta/ and loose_crop/ from insightface's IJB release"
    )


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-blank line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); is this an IJB meta file?") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    return [(number, line.split()) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _integer(path: Path, number: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}: line {number}: {what} must be an integer, got {text!r}") from None


def _expect_fields(path: Path, number: int, fields: list[str], count: int, form: str) -> None:
    if len(fields) != count:
        raise DataError(f"{path}: line {number}: expected {count} space-separated fields '{form}', got {len(fields)}")


def _read_face_tid_mid(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names, templates, medias = [], [], []
    for number, fields in _lines(path):
        _expect_fields(path, number, fields, 3, "image_name template_id media_id")
        names.append(fields[0])
        templates.append(_integer(path, number, fields[1], "the template id"))
        medias.append(_integer(path, number, fields[2], "the media id"))
    if not names:
        raise DataError(f"{path}: no image lines; expected 'image_name template_id media_id' per line")
    return np.array(names), np.array(templates, dtype=np.int64), np.array(medias, dtype=np.int64)


def _check_pair_lines(path: Path) -> None:
    """Find the first bad line of a pair file and raise DataError naming it (the slow, exact path)."""
    for number, fields in _lines(path):
        _expect_fields(path, number, fields, 3, "template1 template2 label")
        _integer(path, number, fields[0], "the first template id")
        _integer(path, number, fields[1], "the second template id")
        if fields[2] not in ("0", "1"):
            raise DataError(f"{path}: line {number}: the label must be 0 or 1, got {fields[2]!r}")


def _line_of_row(path: Path, row: int) -> int:
    """The 1-based line number of the row-th (0-based) non-blank line."""
    return _lines(path)[row][0]


def _read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # 15.6M lines for IJB-C: numpy's C parser reads them in about a second; only when it (or the
    # label check) fails do we walk the lines in Python to say which one is wrong.
    try:
        with warnings.catch_warnings():  # an empty file: our own error below says so
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
        problem = None
    except ValueError as error:
        table, problem = None, str(error)
    if table is not None and table.size and (table.shape[1] != 3 or not np.isin(table[:, 2], (0, 1)).all()):
        problem = "malformed pair lines"
    if problem is not None:
        _check_pair_lines(path)
        raise DataError(f"{path}: {problem}; expected 'template1 template2 label' per line")
    if table is None or table.size == 0:
        raise DataError(f"{path}: no pair lines; expected 'template1 template2 label' per line")
    return table[:, :2].copy(), table[:, 2].astype(bool)


def _read_landmarks(path: Path, image_names: np.ndarray, tid_mid: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = _lines(path)
    if len(lines) != len(image_names):
        raise DataError(
            f"{path}: {len(lines)} image lines, but {tid_mid} has {len(image_names)}; the two files must "
            "list the same images in the same order"
        )
    landmarks = np.empty((len(lines), 10), dtype=np.float32)
    scores = np.empty(len(lines), dtype=np.float32)
    for row, (number, fields) in enumerate(lines):
        _expect_fields(path, number, fields, 12, "image_name x1 y1 ... x5 y5 score")
        if fields[0] != image_names[row]:
            raise DataError(
                f"{path}: line {number} names {fields[0]!r}, but image {row + 1} of {tid_mid} is "
                f"{image_names[row]!r}; the two files must list the same images in the same order"
            )
        try:
            values = [float(value) for value in fields[1:]]
        except ValueError:
            raise DataError(f"{path}: line {number}: landmarks and score must be numbers, got {fields[1:]}") from None
        if not np.isfinite(values).all():
            raise DataError(f"{path}: line {number}: landmarks and score must be finite, got {fields[1:]}")
        landmarks[row] = values[:10]
        scores[row] = values[10]
    return landmarks.reshape(-1, 5, 2), scores


def read_ijb_meta(root: str | os.PathLike, name: str = "IJBC") -> IJBMeta:
    """Read an IJB-B or IJB-C release's meta files (see the module docstring for the format).

    Args:
        root: the dataset folder, holding ``meta/`` (or the meta files themselves) and ``loose_crop/``.
        name: "IJBC" or "IJBB" (any case): picks the ``ijbc_`` / ``ijbb_`` file prefix.

    Returns:
        The per-image names, template and media ids, landmarks and detector scores (None when
        ``<prefix>_name_5pts_score.txt`` is absent), and the template pairs with their labels.

    Raises:
        DataError: naming the file (and line) for a missing file, a line with the wrong number of
            fields, a non-integer id, a label other than 0 / 1, a landmark file out of step with the
            image list, or a pair naming a template that has no image.
    """
    root = Path(root)
    name = name.upper()
    if name not in IJB_NAMES:
        raise ValueError(f"name must be one of {IJB_NAMES}, got {name!r}")
    prefix = name.lower()
    tid_mid_path = _meta_file(root, f"{prefix}_face_tid_mid.txt")
    pairs_path = _meta_file(root, f"{prefix}_template_pair_label.txt")
    landmarks_path = _meta_file(root, f"{prefix}_name_5pts_score.txt", required=False)

    image_names, templates, medias = _read_face_tid_mid(tid_mid_path)
    pairs, labels = _read_pairs(pairs_path)
    unknown = ~np.isin(pairs, templates)
    if unknown.any():
        row = int(np.flatnonzero(unknown.any(axis=1))[0])
        missing = np.unique(pairs[unknown])
        raise DataError(
            f"{pairs_path}: line {_line_of_row(pairs_path, row)}: template {pairs[row][unknown[row]][0]} has no "
            f"image in {tid_mid_path} ({len(missing)} such templates: {missing[:_SHOWN].tolist()}"
            f"{' ...' if len(missing) > _SHOWN else ''}); are both files from one release ({name})?"
        )
    landmarks = scores = None
    if landmarks_path is not None:
        landmarks, scores = _read_landmarks(landmarks_path, image_names, tid_mid_path)
    else:
        logger.info("%s: no %s_name_5pts_score.txt, so no landmarks or detector scores", root, prefix)
    meta = IJBMeta(name, root, image_names, templates, medias, pairs, labels, landmarks, scores)
    logger.info(
        "%s: %d images, %d templates, %d pairs (%d same)",
        name, meta.num_images, meta.num_templates, meta.num_pairs, int(np.count_nonzero(labels)),
    )
    return meta


# --------------------------------------------------------------------------------------- pooling


def template_features(
    embeddings: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool image embeddings into L2-normalized template features, as the IJB protocol does.

    For template t with medias m: ``f_t = normalize(sum_m mean_{i in (t, m)} w_i e_i)``, w_i being the
    detector score of image i (or 1). Embeddings are pooled as given: insightface's default keeps each
    image's norm (a quality signal) and so do we; normalize the rows first to weigh images equally.

    Args:
        embeddings: (N, D) image embeddings (already flip-summed where flip test is used).
        templates: (N,) int template id of each image.
        medias: (N,) int media id of each image.
        scores: (N,) optional weight of each image (the detector score).

    Returns:
        template_ids: (T,) int64, sorted, every distinct id in ``templates``.
        features: (T, D) float64, L2-normalized rows, in the order of ``template_ids``.
    """
    embeddings = np.asarray(embeddings)
    templates = np.asarray(templates)
    medias = np.asarray(medias)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be (N, D) with N >= 1, got shape {embeddings.shape}")
    count = embeddings.shape[0]
    for what, array in (("templates", templates), ("medias", medias)):
        if array.shape != (count,):
            raise ValueError(f"{what} must be ({count},), one id per embedding row, got shape {array.shape}")
        if array.dtype.kind not in "iu":
            raise ValueError(f"{what} must be integer ids, got dtype {array.dtype}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings hold NaN or infinite values; a diverged model or an empty image gives no feature")
    weights = np.ones(count)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (count,):
            raise ValueError(f"scores must be ({count},), one per embedding row, got shape {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("scores hold NaN or infinite values; check the detector score file")
        weights = scores

    template_ids, template_index = np.unique(templates, return_inverse=True)
    template_index = template_index.reshape(-1)
    # Media pooling is a mean over the images of one (template, media): weigh each image by
    # 1 / (images in its group), then one sum per template does both poolings.
    _, group, group_size = np.unique(
        np.stack([template_index, medias.astype(np.int64)], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    weights = weights / group_size[group.reshape(-1)]

    # Segment sum over images sorted by template, a block of rows at a time (469k x 512 float64
    # would be 1.9 GB at once). Within a sorted block each template's rows are contiguous.
    features = np.zeros((len(template_ids), embeddings.shape[1]), dtype=np.float64)
    order = np.argsort(template_index, kind="stable")
    for start in range(0, count, _POOL_ROWS):
        rows = order[start : start + _POOL_ROWS]
        block_templates = template_index[rows]
        block = embeddings[rows].astype(np.float64) * weights[rows, None]
        starts = np.flatnonzero(np.diff(block_templates, prepend=-1))
        features[block_templates[starts]] += np.add.reduceat(block, starts, axis=0)

    norms = np.linalg.norm(features, axis=1)
    zero = norms == 0
    if zero.any():
        raise ValueError(
            f"{int(zero.sum())} templates pool to a zero feature (e.g. {template_ids[zero][:_SHOWN].tolist()}): "
            "their images' embeddings or detector scores are all zero; check the embeddings, or pool without "
            "detector scores"
        )
    return template_ids.astype(np.int64), features / norms[:, None]


# ------------------------------------------------------------------------------------ verification



@dataclass(frozen=True, eq=False)  # arrays inside: == would be ambiguous
class IJBResult:
    """What :func:`verify_templates` found.

    Attributes:
        scores: (P,) float64 cosine of each pair's template features.
        labels: (P,) bool, True where the pair is one subject.
        tar_at_far: {FAR target: TAR, or None where the target is below 1 / different pairs}.
        eer: equal error rate.
        auc: area under the ROC (TAR against FAR), ties counted as a straight segment.
        num_templates: T, the templates that were pooled.
    """

    scores: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    tar_at_far: dict[float, float | None]
    eer: float
    auc: float
    num_templates: int

    @property
    def num_pairs(self) -> int:
        return len(self.scores)

    @property
    def num_same(self) -> int:
        return int(np.count_nonzero(self.labels))

    def to_dict(self) -> dict:
        """JSON-ready scalars; FAR keys as strings like "1e-4"."""
        return {
            "tar_at_far": {rate_key(far): tar for far, tar in self.tar_at_far.items()},
            "eer": self.eer,
            "auc": self.auc,
            "num_pairs": self.num_pairs,
            "num_same": self.num_same,
            "num_different": self.num_pairs - self.num_same,
            "num_templates": self.num_templates,
        }


def pair_scores(
    template_ids: np.ndarray, features: np.ndarray, pairs: np.ndarray, chunk_size: int | None = None
) -> np.ndarray:
    """Cosine of each pair's template features, a chunk of pairs at a time.

    Args:
        template_ids: (T,) distinct int ids, any order.
        features: (T, D) L2-normalized rows, in the order of ``template_ids``.
        pairs: (P, 2) template ids.
        chunk_size: pairs per chunk; default 2**24 / D (128 MiB per gathered float64 array).

    Returns:
        (P,) float64 scores.
    """
    template_ids = np.asarray(template_ids)
    features = np.asarray(features, dtype=np.float64)
    pairs = np.asarray(pairs)
    if features.ndim != 2 or template_ids.shape != (features.shape[0],):
        raise ValueError(
            "features must be (T, D) with one row per template id, "
            f"got shapes {features.shape} and {template_ids.shape}"
        )
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) template ids, got shape {pairs.shape}")
    order = np.argsort(template_ids, kind="stable")
    sorted_ids = template_ids[order]
    if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
        raise ValueError("template_ids must be distinct: one feature row per template")
    position = np.minimum(np.searchsorted(sorted_ids, pairs), len(sorted_ids) - 1)
    unknown = sorted_ids[position] != pairs
    if unknown.any():
        missing = np.unique(pairs[unknown])
        raise ValueError(
            f"{len(missing)} templates in pairs have no feature (e.g. {missing[:_SHOWN].tolist()}); pool "
            "features for every template the pairs name"
        )
    index = order[position]
    if chunk_size is None:
        chunk_size = max(1, _PAIR_VALUES // max(1, features.shape[1]))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    scores = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), chunk_size):
        chunk = index[start : start + chunk_size]
        scores[start : start + len(chunk)] = np.einsum("ij,ij->i", features[chunk[:, 0]], features[chunk[:, 1]])
    return scores


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    far, tar, _ = roc(scores, labels)
    return float(np.sum((far[1:] - far[:-1]) * (tar[1:] + tar[:-1]) / 2))


def verify_templates(
    template_ids: np.ndarray,
    features: np.ndarray,
    pairs: np.ndarray,
    labels: np.ndarray,
    far_targets: Sequence[float] = FAR_TARGETS,
    chunk_size: int | None = None,
) -> IJBResult:
    """Score template pairs by cosine and measure TAR@FAR, EER and AUC.

    Args:
        template_ids: (T,) distinct int ids, any order.
        features: (T, D) L2-normalized template features, in the order of ``template_ids``.
        pairs: (P, 2) template ids to compare.
        labels: (P,) bool (or 0/1), True where the pair is one subject.
        far_targets: FARs to report TAR at (see :func:`arcface.eval.verification.tar_at_far`).
        chunk_size: pairs scored at once (see :func:`pair_scores`).
    """
    scores = pair_scores(template_ids, features, pairs, chunk_size)
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must be {scores.shape}, one per pair, got shape {labels.shape}")
    if labels.dtype != np.bool_:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must hold booleans (or 0/1): True where the pair is one subject")
        labels = labels.astype(bool)
    result = IJBResult(
        scores=scores,
        labels=labels,
        tar_at_far=tar_at_far(scores, labels, far_targets),
        eer=eer(scores, labels),
        auc=_auc(scores, labels),
        num_templates=len(np.asarray(template_ids)),
    )
    logger.info(
        "%d pairs of %d templates: %s, EER %.4f",
        result.num_pairs,
        result.num_templates,
        ", ".join(f"TAR@FAR={rate_key(f)} {'n/a' if t is None else f'{t:.4f}'}" for f, t in result.tar_at_far.items()),
        result.eer,
    )
    return result


def ijb_verification(
    embeddings: np.ndarray,
    meta: IJBMeta,
    use_detector_score: bool = True,
    far_targets: Sequence[float] = FAR_TARGETS,
    chunk_size: int | None = None,
) -> IJBResult:
    """The IJB-B / IJB-C 1:1 protocol from image embeddings: pool templates, score pairs, measure.

    Args:
        embeddings: (N, D) image embeddings in the order of ``meta.image_names`` (flip-summed where
            flip test is used; pooled as given, see :func:`template_features`).
        meta: from :func:`read_ijb_meta`.
        use_detector_score: weigh each image by its detector score (insightface's default); needs
            the ``*_name_5pts_score.txt`` file.
        far_targets, chunk_size: see :func:`verify_templates`.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != meta.num_images:
        raise ValueError(
            f"embeddings must be ({meta.num_images}, D), one row per image of {meta.name} in file order, "
            f"got shape {embeddings.shape}"
        )
    if use_detector_score and meta.scores is None:
        raise ValueError(
            f"{meta.name} meta has no detector scores ({meta.name.lower()}_name_5pts_score.txt was not found "
            f"in {meta.root}); add the file or pass use_detector_score=False"
        )
    template_ids, features = template_features(
        embeddings, meta.templates, meta.medias, meta.scores if use_detector_score else None
    )
    return verify_templates(template_ids, features, meta.pairs, meta.labels, far_targets, chunk_size)
