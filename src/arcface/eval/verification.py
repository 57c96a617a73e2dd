"""Face verification metrics from pair scores: k-fold accuracy (LFW's protocol), ROC, TAR@FAR, EER.

Pure numpy. A score is a similarity (higher = more alike, e.g. the cosine of two L2-normalized
embeddings), and a pair is predicted "same person" when its score is strictly above the threshold.

Everything here is exact: thresholds are chosen among the midpoints between consecutive distinct
scores (plus -inf and +inf), never on a grid, so results do not depend on a step size, and ties
between equal scores are counted as they fall (all pairs with one score land on one side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "VerificationResult",
    "kfold_accuracy",
    "best_threshold",
    "roc",
    "tar_at_far",
    "eer",
    "FAR_TARGETS",
]

FAR_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def rate_key(rate: float) -> str:
    """1e-4 -> "1e-4", 0.005 -> "5e-3": a JSON key for a FAR/FPIR that reads like the papers' tables."""
    mantissa, exponent = f"{rate:.12e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass(frozen=True, eq=False)  # arrays inside: == would be ambiguous
class VerificationResult:
    """What :func:`kfold_accuracy` found.

    Attributes:
        accuracy_mean: mean over folds of the test-fold accuracy (the number papers report for LFW).
        accuracy_std: population standard deviation (ddof=0) of the fold accuracies, as insightface
            and most papers report it.
        fold_accuracies: (K,) accuracy on each fold with the threshold chosen on the other folds.
        fold_thresholds: (K,) those thresholds (-inf / +inf when the best rule was "all same" /
            "all different").
        best_threshold_accuracy: accuracy of the single best threshold chosen on all pairs at once
            (an optimistic upper bound of accuracy_mean; no held-out data).
        threshold: mean of fold_thresholds, a threshold to deploy.
        folds: (K,) the fold labels, in the order of the per-fold arrays.
        scores: (P,) float64 pair scores, same: (P,) bool, pair_folds: (P,) int, as given; kept so
            that ROC and TAR@FAR can be computed from the result later.
    """

    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    best_threshold_accuracy: float
    threshold: float
    folds: np.ndarray
    scores: np.ndarray = field(repr=False)
    same: np.ndarray = field(repr=False)
    pair_folds: np.ndarray = field(repr=False)

    @property
    def num_pairs(self) -> int:
        return len(self.scores)

    def summary(self) -> dict[str, float]:
        """Scalars for a log line or a metrics file."""
        return {
            "accuracy": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "best_threshold_accuracy": self.best_threshold_accuracy,
            "threshold": self.threshold,
        }


# ------------------------------------------------------------------------------------------ checks


def _check(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scores as (P,) finite float64 and same as (P,) bool, or ValueError saying what is wrong."""
    scores = np.asarray(scores, dtype=np.float64)
    same_array = np.asarray(same)
    if scores.ndim != 1 or same_array.shape != scores.shape:
        raise ValueError(f"scores and same must be 1-D of one length, got shapes {scores.shape} and {same_array.shape}")
    if same_array.dtype != np.bool_:
        if not np.isin(same_array, (0, 1)).all():
            raise ValueError("same must hold booleans (or 0/1)")
        same_array = same_array.astype(bool)
    if scores.size == 0:
        raise ValueError("no pairs to evaluate")
    if not np.isfinite(scores).all():
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise ValueError(
            f"{bad} of {scores.size} scores are NaN or infinite; a zero or non-finite embedding "
            "(a diverged model, an empty image) gives no similarity"
        )
    return scores, same_array


def _class_counts(same: np.ndarray) -> tuple[int, int]:
    num_same = int(np.count_nonzero(same))
    num_different = len(same) - num_same
    if num_same == 0 or num_different == 0:
        raise ValueError(
            f"{num_same} same and {num_different} different pairs: ROC, TAR@FAR and EER need both kinds"
        )
    return num_same, num_different


# -------------------------------------------------------------------------------------- accuracy


def _midpoint(low: float, high: float) -> float:
    """A threshold t with low <= t < high, halfway when floats allow, so that ``score > t`` <=> ``score >= high``."""
    middle = low + (high - low) / 2
    # Adjacent floats: the halfway value rounds to one of them; low keeps "> t" meaning ">= high".
    return middle if middle < high else low


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold that maximizes accuracy on these pairs, and that accuracy.

    Candidates are -inf (all pairs "same"), the midpoints between consecutive distinct scores, and
    +inf (all "different"). Among equally accurate candidates the lowest threshold is taken (as
    insightface's argmax over ascending thresholds does), so the result is deterministic.
    """
    scores, same = _check(scores, same)
    distinct, inverse = np.unique(scores, return_inverse=True)
    same_per_value = np.bincount(inverse, weights=same, minlength=len(distinct))
    different_per_value = np.bincount(inverse, weights=~same, minlength=len(distinct))
    # Candidate j puts the j lowest distinct scores below the threshold, predicted "different":
    # correct = same pairs above + different pairs below.
    same_below = np.concatenate(([0.0], np.cumsum(same_per_value)))
    different_below = np.concatenate(([0.0], np.cumsum(different_per_value)))
    correct = (same_below[-1] - same_below) + different_below
    j = int(np.argmax(correct))  # first maximum: the lowest threshold
    if j == 0:
        threshold = -np.inf
    elif j == len(distinct):
        threshold = np.inf
    else:
        threshold = _midpoint(float(distinct[j - 1]), float(distinct[j]))
    return threshold, float(correct[j]) / len(scores)


def _accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((scores > threshold) == same))


def kfold_accuracy(
    scores: Sequence[float] | np.ndarray,
    same: Sequence[bool] | np.ndarray,
    folds: Sequence[int] | np.ndarray,
) -> VerificationResult:
    """LFW's unrestricted-protocol accuracy: threshold chosen on K-1 folds, tested on the K-th.

    Args:
        scores: (P,) similarity of each pair; higher = more alike.
        same: (P,) bool, True where the pair shows one person.
        folds: (P,) int fold label of each pair (any integers; at least two distinct values).

    Returns:
        The mean and population std (ddof=0, as insightface and most papers report) of the per-fold
        accuracies, those accuracies and thresholds, the all-pairs best-threshold accuracy, and the
        mean fold threshold. See :func:`best_threshold` for how a threshold is chosen.
    """
    scores, same = _check(scores, same)
    folds = np.asarray(folds)
    if folds.shape != scores.shape:
        raise ValueError(f"folds must have the shape of scores {scores.shape}, got {folds.shape}")
    if folds.dtype.kind not in "iub":
        raise ValueError(f"folds must be integers, got dtype {folds.dtype}")
    labels = np.unique(folds)
    if len(labels) < 2:
        raise ValueError(
            "all pairs are in one fold, so no threshold can be chosen on held-out folds; give the pairs "
            "folds (e.g. arcface.data.protocols.stratified_folds for View 1 files)"
        )
    accuracies = np.empty(len(labels))
    thresholds = np.empty(len(labels))
    for index, label in enumerate(labels):
        test = folds == label
        thresholds[index], _ = best_threshold(scores[~test], same[~test])
        accuracies[index] = _accuracy(scores[test], same[test], thresholds[index])
    _, overall = best_threshold(scores, same)
    with np.errstate(invalid="ignore"):  # -inf and +inf fold thresholds average to NaN: say so, no warning
        threshold = float(np.mean(thresholds))
    return VerificationResult(
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        fold_accuracies=accuracies,
        fold_thresholds=thresholds,
        best_threshold_accuracy=overall,
        threshold=threshold,
        folds=labels,
        scores=scores,
        same=same,
        pair_folds=folds,
    )


# ------------------------------------------------------------------------------------------- ROC


def roc(
    scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC: one point per distinct score, from (0, 0) to (1, 1).

    Point i accepts (predicts "same" for) every pair with ``score >= thresholds[i]``; thresholds run
    from +inf (accept nothing) down through every distinct score in descending order.

    Returns:
        far: (T,) false accept rate, different pairs accepted / different pairs, nondecreasing.
        tar: (T,) true accept rate, same pairs accepted / same pairs, nondecreasing.
        thresholds: (T,) decreasing, thresholds[0] = +inf.
    """
    scores, same = _check(scores, same)
    num_same, num_different = _class_counts(same)
    distinct, inverse = np.unique(scores, return_inverse=True)
    same_per_value = np.bincount(inverse, weights=same, minlength=len(distinct))[::-1]
    different_per_value = np.bincount(inverse, weights=~same, minlength=len(distinct))[::-1]
    tar = np.concatenate(([0.0], np.cumsum(same_per_value))) / num_same
    far = np.concatenate(([0.0], np.cumsum(different_per_value))) / num_different
    thresholds = np.concatenate(([np.inf], distinct[::-1]))
    return far, tar, thresholds


def tar_at_far(
    scores: Sequence[float] | np.ndarray,
    same: Sequence[bool] | np.ndarray,
    targets: Sequence[float] = FAR_TARGETS,
) -> dict[float, float | None]:
    """TAR at each target FAR: the largest TAR of an ROC point with FAR <= target.

    A target below 1 / (number of different pairs) cannot be told from 0 with this many pairs, so it
    maps to None rather than to a number that only says "no false accept at all" (6000-pair LFW has
    3000 different pairs: FAR 1e-4 and below are None).
    """
    far, tar, _ = roc(scores, same)
    num_different = int(np.count_nonzero(~np.asarray(same, dtype=bool)))
    result: dict[float, float | None] = {}
    for target in targets:
        if target * num_different < 1 - 1e-9:  # slack: 1e-3 * 1000 must count as resolvable
            result[target] = None
        else:
            # far is nondecreasing, so the last point with far <= target has the largest TAR.
            result[target] = float(tar[np.searchsorted(far, target, side="right") - 1])
    return result


def eer(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray) -> float:
    """Equal error rate: where FAR = FRR (1 - TAR) on the ROC, linearly interpolated between points.

    The ROC is a polyline through the points of :func:`roc` (a segment across a run of tied scores
    is what random tie-breaking gives), and it crosses the line FAR = 1 - TAR exactly once since
    FAR + TAR - 1 rises from -1 to +1. The EER is the FAR at that crossing.
    """
    far, tar, _ = roc(scores, same)
    gap = far + tar - 1.0  # FAR - FRR, nondecreasing from -1 to 1
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0:
        return float(far[i])
    fraction = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(far[i - 1] + fraction * (far[i] - far[i - 1]))
