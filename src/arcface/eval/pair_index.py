"""Verification protocols as indices, built once: pairs files and ``.bin`` sets -> (left, right, same, folds).

Both the trainer's periodic evaluation (:func:`arcface.eval.verify_pairs` / ``verify_bin``) and
``arcface eval`` (:mod:`arcface.eval.evaluate`) turn a protocol into a :class:`PairIndex` and score it
with :meth:`PairIndex.scores`, so the folds rule and the scoring are written once.

>>> images, index = PairIndex.from_pairs(read_pairs("pairsDevTest.txt"))
>>> result = index.result(embed_images(model, PairImages(...)))     # embeddings (len(images), D)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.binset import VerificationSet
from ..data.protocols import Pair, protocol_folds
from .verification import VerificationResult, kfold_accuracy

__all__ = ["PairIndex", "bin_folds", "image_positions", "unit_rows", "METRICS"]

METRICS = ("cosine", "l2")


def bin_folds(num_pairs: int, n_folds: int = 10) -> np.ndarray:
    """Fold of each .bin pair: ``n_folds`` consecutive blocks, as insightface's unshuffled KFold.

    Block sizes are equal when ``n_folds`` divides ``num_pairs`` (LFW: 6000 -> 600); otherwise the
    first ``num_pairs % n_folds`` blocks hold one pair more, as scikit-learn's KFold splits.
    """
    if not 2 <= n_folds <= num_pairs:
        raise ValueError(f"n_folds must be between 2 and the number of pairs ({num_pairs}), got {n_folds}")
    sizes = np.full(n_folds, num_pairs // n_folds)
    sizes[: num_pairs % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) -> float64 rows of norm 1; ValueError when a row is zero or not finite (a broken model)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    broken = (norms == 0) | ~np.isfinite(norms)
    if np.any(broken):
        raise ValueError(f"{int(np.count_nonzero(broken))} embeddings are zero or not finite; the model's output is broken for these inputs")
    return embeddings / norms


def image_positions(pairs: Sequence[Pair]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(distinct image paths in order of first appearance, (P,) left index, (P,) right index)."""
    if not pairs:
        raise ValueError("no pairs given")
    position: dict[str, int] = {}
    for pair in pairs:
        for path in (pair.left, pair.right):
            position.setdefault(path, len(position))
    left = np.array([position[pair.left] for pair in pairs], dtype=np.int64)
    right = np.array([position[pair.right] for pair in pairs], dtype=np.int64)
    return list(position), left, right


@dataclass(frozen=True)
class PairIndex:
    """P verification pairs as indices into a list of distinct images.

    Attributes:
        left, right: (P,) int64 image index of each pair's two images.
        same: (P,) bool; folds: (P,) int64 fold of each pair.
        stratified: the folds were made by :func:`arcface.data.protocols.stratified_folds`.
    """

    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    stratified: bool = False

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair], n_folds: int = 10) -> tuple[list[str], "PairIndex"]:
        """(distinct image paths in order of first appearance, the index); folds by ``protocol_folds``."""
        paths, left, right = image_positions(pairs)
        folds, stratified = protocol_folds(pairs, n_folds)
        same = np.array([pair.same for pair in pairs], dtype=bool)
        return paths, cls(left, right, same, np.asarray(folds, dtype=np.int64), stratified)

    @classmethod
    def from_bin(cls, verification: VerificationSet, n_folds: int = 10) -> "PairIndex":
        """A ``.bin``'s 2N images in order (pair k: images 2k, 2k+1), consecutive folds as insightface."""
        pairs = np.arange(verification.num_pairs, dtype=np.int64)
        return cls(2 * pairs, 2 * pairs + 1, np.asarray(verification.issame, dtype=bool), bin_folds(len(pairs), n_folds))

    def with_folds(self, folds: Sequence[int]) -> "PairIndex":
        if len(folds) != len(self.same):
            raise ValueError(f"{len(folds)} folds for {len(self.same)} pairs")
        return PairIndex(self.left, self.right, self.same, np.asarray(folds, dtype=np.int64), False)

    def scores(self, embeddings: np.ndarray, metric: str = "cosine") -> np.ndarray:
        """(P,) float64, higher = more alike: the cosine of the two embeddings, or minus the squared L2
        distance of the normalized embeddings (``metric="l2"``)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        unit = unit_rows(embeddings)
        cosine = np.einsum("pd,pd->p", unit[self.left], unit[self.right])
        return cosine if metric == "cosine" else -(2.0 - 2.0 * cosine)

    def result(self, embeddings: np.ndarray) -> VerificationResult:
        """K-fold verification of cosine scores over this index's folds."""
        return kfold_accuracy(self.scores(embeddings), self.same, self.folds)
