"""1:N identification: closed-set CMC (rank-k identification rate) and open-set TPIR at FPIR.

Pure numpy. Each probe is compared by cosine with every gallery entry; a gallery identity may have
several entries (images or templates) and scores the best of them. Distractors (MegaFace style)
join the gallery as impostors, each its own identity with no label, so they can only push the
correct identity down the list.

* A probe is *mated* when its label is in the gallery. Its rank is 1 + the number of other
  identities (gallery or distractor) that score at least as high as its own identity: a tie with an
  impostor counts against the probe, so ranks never depend on sort order.
* Closed set, over mated probes: ``cmc[k - 1]`` = fraction with rank <= k.
* Open set (IJB-C 1:N): the non-mated probes set the threshold. For a target FPIR f over n
  non-mated probes, at most floor(f * n) of them may have a top score at or above the threshold t,
  and t is the lowest such value; TPIR = fraction of mated probes whose own identity is rank 1 with
  a score >= t. A target below 1 / n cannot be told from 0 and gives None.

Similarities are computed a chunk of probes at a time (and distractors a block at a time), keeping
per probe only its own identity's score, how many identities beat it and its top score, so that a
million distractors never need a (Q, G + M) matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .verification import rate_key

__all__ = ["IdentificationResult", "identify"]

logger = logging.getLogger(__name__)

# Similarity values held at once per (probe chunk x gallery or distractor block): 128 MiB of float64.
_VALUES = 2**24

# Rows must have norm 1 within this tolerance (float16-stored features included).
_NORM_TOLERANCE = 1e-3



@dataclass(frozen=True, eq=False)  # arrays inside: == would be ambiguous
class IdentificationResult:
    """What :func:`identify` found.

    Attributes:
        ranks: the ranks asked for, ascending.
        cmc: (R,) with R = max(ranks): ``cmc[k - 1]`` = fraction of mated probes with rank <= k.
        tpir_at_fpir: {FPIR target: TPIR, or None when the target is below 1 / non-mated probes};
            empty when no probe is non-mated (no open-set measure).
        fpir_thresholds: {FPIR target: the threshold t (scores >= t are accepted), or None}.
        num_mated: probes whose label is in the gallery.
        num_non_mated: the other probes.
        gallery_size: G, gallery entries (without distractors).
        gallery_identities: distinct gallery labels.
        num_distractors: M.
        probe_ranks: (Q,) int64 rank of each mated probe's own identity (1 = top); 0 for non-mated.
        top_scores: (Q,) best score of each probe over all identities and distractors.
        mated_scores: (Q,) score of each probe's own identity (best of its entries); NaN for non-mated.
    """

    ranks: tuple[int, ...]
    cmc: np.ndarray
    tpir_at_fpir: dict[float, float | None]
    fpir_thresholds: dict[float, float | None]
    num_mated: int
    num_non_mated: int
    gallery_size: int
    gallery_identities: int
    num_distractors: int
    probe_ranks: np.ndarray = field(repr=False)
    top_scores: np.ndarray = field(repr=False)
    mated_scores: np.ndarray = field(repr=False)

    def rank_rate(self, k: int) -> float:
        """Rank-k identification rate (k <= max(ranks))."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank {k} is outside the computed CMC (1 to {len(self.cmc)}); ask identify() for it")
        return float(self.cmc[k - 1])

    @property
    def rank1(self) -> float:
        return self.rank_rate(1)

    def to_dict(self) -> dict:
        """JSON-ready: ``rank1``, ``rank5``, ... for the requested ranks, the CMC list, TPIR@FPIR with
        keys like "1e-2", and the counts."""
        result: dict = {f"rank{k}": self.rank_rate(k) for k in self.ranks}
        result["cmc"] = [float(rate) for rate in self.cmc]
        result["tpir_at_fpir"] = {rate_key(f): tpir for f, tpir in self.tpir_at_fpir.items()}
        result["fpir_thresholds"] = {rate_key(f): t for f, t in self.fpir_thresholds.items()}
        result.update(
            num_mated_probes=self.num_mated,
            num_non_mated_probes=self.num_non_mated,
            gallery_size=self.gallery_size,
            gallery_identities=self.gallery_identities,
            num_distractors=self.num_distractors,
        )
        return result


# ------------------------------------------------------------------------------------------ checks


def _features(name: str, array: np.ndarray, dim: int | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be (rows, D) with at least one row, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns like the gallery, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric features, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} hold NaN or infinite values; a diverged model or an empty image gives no feature")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    if np.abs(norms - 1).max() > _NORM_TOLERANCE:
        bad = int(np.count_nonzero(np.abs(norms - 1) > _NORM_TOLERANCE))
        raise ValueError(
            f"{bad} rows of {name} are not L2-normalized (norms {norms.min():.4g} to {norms.max():.4g}); "
            "divide each row by its norm first: x / np.linalg.norm(x, axis=1, keepdims=True)"
        )
    return array


def _labels(name: str, labels: Sequence | np.ndarray, count: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == object:  # e.g. from pandas: let numpy find the common type of the items
        labels = np.array(labels.tolist())
    if labels.shape != (count,):
        raise ValueError(f"{name} must be ({count},), one label per row, got shape {labels.shape}")
    if labels.dtype.kind not in "iuUS":
        raise ValueError(f"{name} must be integers or strings, got dtype {labels.dtype}")
    return labels


def _label_family(labels: np.ndarray) -> str:
    return {"i": "integers", "u": "integers", "U": "strings", "S": "bytes"}[labels.dtype.kind]


# ------------------------------------------------------------------------------------ identify


def identify(
    gallery: np.ndarray,
    gallery_labels: Sequence | np.ndarray,
    probes: np.ndarray,
    probe_labels: Sequence | np.ndarray,
    distractors: np.ndarray | None = None,
    ranks: Sequence[int] = (1, 5, 10),
    fpir_targets: Sequence[float] = (0.01, 0.1),
    chunk_size: int | None = None,
    distractor_chunk: int | None = None,
) -> IdentificationResult:
    """Closed-set CMC and open-set TPIR@FPIR of probes against a gallery (see the module docstring).

    Similarities are computed in the common floating type of the inputs (float32 features stay
    float32, which halves the time of a million-distractor run; give float64 for exact ties).

    Args:
        gallery: (G, D) L2-normalized features of the enrolled entries (images or templates).
        gallery_labels: (G,) identity of each entry, integers or strings; repeats allowed.
        probes: (Q, D) L2-normalized probe features.
        probe_labels: (Q,) identity of each probe, of the gallery labels' kind; a label absent from
            the gallery makes the probe non-mated.
        distractors: (M, D) L2-normalized impostor features added to the gallery, each its own
            identity (MegaFace's 1M distractors); None for none.
        ranks: ranks k to report rank-k identification rates for; the CMC runs to max(ranks).
        fpir_targets: FPIRs in (0, 1) to report TPIR at (skipped when no probe is non-mated).
        chunk_size: probes compared at once; default keeps a chunk's similarity block near 2**24
            values.
        distractor_chunk: distractors compared at once; default keeps the block near 2**24 values.

    Raises:
        ValueError: bad shapes, non-normalized or non-finite features, labels of two kinds, no mated
            probe, or ranks / targets out of range.
    """
    gallery = _features("gallery", gallery)
    dim = gallery.shape[1]
    probes = _features("probes", probes, dim)
    num_distractors = 0
    if distractors is not None and np.asarray(distractors).size:
        distractors = _features("distractors", distractors, dim)
        num_distractors = distractors.shape[0]
    gallery_labels = _labels("gallery_labels", gallery_labels, gallery.shape[0])
    probe_labels = _labels("probe_labels", probe_labels, probes.shape[0])
    if _label_family(gallery_labels) != _label_family(probe_labels):
        raise ValueError(
            f"gallery labels are {_label_family(gallery_labels)} and probe labels {_label_family(probe_labels)}; "
            "give both as one kind so that equal identities compare equal"
        )
    ranks = tuple(sorted({int(k) for k in ranks}))
    if not ranks or ranks[0] < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    fpir_targets = tuple(float(f) for f in fpir_targets)
    if any(not 0 < f < 1 for f in fpir_targets):
        raise ValueError(f"fpir_targets must lie in (0, 1), got {fpir_targets}")
    for name, value in (("chunk_size", chunk_size), ("distractor_chunk", distractor_chunk)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")

    # Identities: gallery label k -> index k of the sorted distinct labels; a probe is mated when
    # its label is one of them.
    identity_labels, gallery_identity = np.unique(gallery_labels, return_inverse=True)
    gallery_identity = gallery_identity.reshape(-1)
    num_identities = len(identity_labels)
    position = np.minimum(np.searchsorted(identity_labels, probe_labels), num_identities - 1)
    mated = identity_labels[position] == probe_labels
    probe_identity = np.where(mated, position, -1)
    num_mated = int(np.count_nonzero(mated))
    num_probes = probes.shape[0]
    if num_mated == 0:
        raise ValueError(
            "no probe's label is in the gallery, so there is nothing to identify; check that probe and "
            "gallery labels use one naming (both subject ids, both names)"
        )

    # Gallery columns sorted by identity: each identity's best entry is one maximum.reduceat segment.
    order = np.argsort(gallery_identity, kind="stable")
    dtype = np.result_type(gallery, probes, np.float32)
    if num_distractors:
        dtype = np.result_type(dtype, distractors)
    sorted_gallery = gallery[order].astype(dtype)
    segment_starts = np.flatnonzero(np.diff(gallery_identity[order], prepend=-1))

    if chunk_size is None:
        width = max(gallery.shape[0], min(num_distractors, 8192), 1)
        chunk_size = max(1, min(num_probes, _VALUES // width))
    if distractor_chunk is None:
        distractor_chunk = max(1, _VALUES // chunk_size)

    probe_ranks = np.zeros(num_probes, dtype=np.int64)
    top_scores = np.empty(num_probes, dtype=np.float64)
    mated_scores = np.full(num_probes, np.nan)
    for start in range(0, num_probes, chunk_size):
        stop = min(start + chunk_size, num_probes)
        chunk = probes[start:stop].astype(dtype)
        identity_scores = np.maximum.reduceat(chunk @ sorted_gallery.T, segment_starts, axis=1)  # (q, K)
        own = probe_identity[start:stop]
        is_mated = own >= 0
        rows = np.flatnonzero(is_mated)
        # Non-mated rows compare against +inf: nothing counts for them.
        own_score = np.full(stop - start, np.inf, dtype=dtype)
        own_score[rows] = identity_scores[rows, own[rows]]
        # Identities at least as good as the probe's own, itself included once.
        at_least = np.count_nonzero(identity_scores >= own_score[:, None], axis=1) - 1
        top = identity_scores.max(axis=1)
        for block_start in range(0, num_distractors, distractor_chunk):
            block = distractors[block_start : block_start + distractor_chunk].astype(dtype)
            block_scores = chunk @ block.T  # (q, m)
            at_least += np.count_nonzero(block_scores >= own_score[:, None], axis=1)
            top = np.maximum(top, block_scores.max(axis=1))
        probe_ranks[start:stop] = np.where(is_mated, at_least + 1, 0)
        top_scores[start:stop] = top
        mated_scores[start + rows] = own_score[rows]

    mated_ranks = probe_ranks[mated]
    max_rank = ranks[-1]
    cmc = np.array([np.count_nonzero(mated_ranks <= k) for k in range(1, max_rank + 1)], dtype=np.float64) / num_mated

    tpir_at_fpir: dict[float, float | None] = {}
    thresholds: dict[float, float | None] = {}
    non_mated_top = np.sort(top_scores[~mated])[::-1]  # descending
    num_non_mated = len(non_mated_top)
    if num_non_mated:
        rank1_mated_scores = mated_scores[mated][mated_ranks == 1]
        for target in fpir_targets:
            allowed = int(np.floor(target * num_non_mated + 1e-9))  # slack: 0.01 * 100 must allow 1
            if allowed == 0:
                tpir_at_fpir[target] = thresholds[target] = None
                continue
            # allowed < num_non_mated since target < 1. Accepting exactly the scores above the
            # (allowed + 1)-th highest non-mated score keeps at most `allowed` non-mated probes.
            boundary = float(non_mated_top[allowed])
            thresholds[target] = float(np.nextafter(boundary, np.inf))
            tpir_at_fpir[target] = float(np.count_nonzero(rank1_mated_scores > boundary)) / num_mated
    else:
        logger.info("no non-mated probe (every probe label is in the gallery): open-set TPIR@FPIR skipped")

    result = IdentificationResult(
        ranks=ranks,
        cmc=cmc,
        tpir_at_fpir=tpir_at_fpir,
        fpir_thresholds=thresholds,
        num_mated=num_mated,
        num_non_mated=num_non_mated,
        gallery_size=gallery.shape[0],
        gallery_identities=num_identities,
        num_distractors=num_distractors,
        probe_ranks=probe_ranks,
        top_scores=top_scores,
        mated_scores=mated_scores,
    )
    logger.info(
        "%d probes (%d mated) vs %d gallery entries of %d identities + %d distractors: %s",
        num_probes, num_mated, gallery.shape[0], num_identities, num_distractors,
        ", ".join(f"rank-{k} {result.rank_rate(k):.4f}" for k in ranks),
    )
    return result
