"""arcface.eval.identification: 1:N CMC and TPIR@FPIR against a slow literal reference (full similarity
matrix, one probe at a time) and a constructed gallery whose ranks and thresholds are known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from arcface.eval.identification import IdentificationResult, identify

# ----------------------------------------------------------------------------- slow reference


def dot(a, b) -> float:
    return sum(float(p) * float(q) for p, q in zip(a, b))


def reference_identify(gallery, gallery_labels, probes, probe_labels, distractors, max_rank, fpir_targets):
    """Literal: per probe, each identity's score is the best of its entries (a distractor is its own
    identity); rank = 1 + identities other than its own scoring at least as high. TPIR at FPIR f is
    the best TPIR over thresholds t (accept >= t) whose FPIR <= f."""
    gallery_set = set(gallery_labels.tolist())
    ranks, own_scores, tops, mated = [], [], [], []
    for probe, label in zip(probes, probe_labels.tolist()):
        by_identity = {}
        for entry, entry_label in zip(gallery, gallery_labels.tolist()):
            score = dot(probe, entry)
            by_identity[("gallery", entry_label)] = max(by_identity.get(("gallery", entry_label), -math.inf), score)
        for index, entry in enumerate(distractors):
            by_identity[("distractor", index)] = dot(probe, entry)
        tops.append(max(by_identity.values()))
        if label in gallery_set:
            own = by_identity[("gallery", label)]
            others = [s for key, s in by_identity.items() if key != ("gallery", label)]
            ranks.append(1 + sum(1 for s in others if s >= own))
            own_scores.append(own)
            mated.append(True)
        else:
            ranks.append(0)
            own_scores.append(math.nan)
            mated.append(False)
    num_mated = sum(mated)
    cmc = [sum(1 for r, m in zip(ranks, mated) if m and r <= k) / num_mated for k in range(1, max_rank + 1)]
    non_mated_tops = [t for t, m in zip(tops, mated) if not m]
    tpir = {}
    if non_mated_tops:
        for target in fpir_targets:
            if target * len(non_mated_tops) < 1 - 1e-9:
                tpir[target] = None
                continue
            best = 0.0
            for threshold in [math.inf] + sorted(set(non_mated_tops + [s for s, m in zip(own_scores, mated) if m])):
                fpir = sum(1 for t in non_mated_tops if t >= threshold) / len(non_mated_tops)
                if fpir <= target:
                    hits = sum(1 for r, s, m in zip(ranks, own_scores, mated) if m and r == 1 and s >= threshold)
                    best = max(best, hits / num_mated)
            tpir[target] = best
    return ranks, own_scores, tops, cmc, tpir


def _normalized(rng, rows, dim):
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed):
    rng = np.random.default_rng(seed)
    dim = 6
    names = np.array([f"person_{i}" for i in range(7)])
    gallery_labels = names[rng.integers(0, 5, size=12)]  # several entries per identity, names 5, 6 absent
    gallery = _normalized(rng, 12, dim)
    probe_labels = names[rng.integers(0, 7, size=23)]
    probes = _normalized(rng, 23, dim)
    # Probes near their own identity's first entry, so that ranks spread over 1..several.
    for row, label in enumerate(probe_labels):
        if label in gallery_labels:
            probes[row] += 0.8 * gallery[np.flatnonzero(gallery_labels == label)[0]]
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    distractors = _normalized(rng, 9, dim)
    targets = (0.05, 0.2, 0.5)

    result = identify(
        gallery, gallery_labels, probes, probe_labels, distractors,
        ranks=(1, 3, 5), fpir_targets=targets, chunk_size=4, distractor_chunk=4,
    )
    ranks, own, tops, cmc, tpir = reference_identify(
        gallery, gallery_labels, probes, probe_labels, distractors, 5, targets
    )
    assert result.probe_ranks.tolist() == ranks
    np.testing.assert_allclose(result.mated_scores, own, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.top_scores, tops, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.cmc, cmc)
    assert set(result.tpir_at_fpir) == set(tpir)
    for target, expected in tpir.items():
        assert result.tpir_at_fpir[target] == (None if expected is None else pytest.approx(expected))
    assert result.num_mated + result.num_non_mated == 23 and result.num_distractors == 9
    assert result.gallery_size == 12 and result.gallery_identities == len(set(gallery_labels.tolist()))
    # Chunking changes nothing (but the last bit of a score: BLAS sums in a shape-dependent order).
    whole = identify(gallery, gallery_labels, probes, probe_labels, distractors, ranks=(1, 3, 5), fpir_targets=targets)
    assert whole.probe_ranks.tolist() == ranks and whole.cmc.tolist() == result.cmc.tolist()
    assert whole.tpir_at_fpir == result.tpir_at_fpir
    np.testing.assert_allclose(whole.top_scores, result.top_scores, rtol=1e-12)


# ------------------------------------------------------------------------- a constructed case

# Gallery: one-hot e_0 .. e_5 for identities 0..5, and identity 2 again as e_6. A probe with
# coordinates p scores p_i against e_i, so its scores are read off its coordinates (e_7 takes up
# the rest of the norm).
GALLERY = np.eye(8)[:7]
GALLERY_LABELS = np.array([0, 1, 2, 3, 4, 5, 2])
MATED = [  # label, coordinates on e_0 .. e_6; rank by hand
    (0, [0.9, 0.1, 0.2, 0, 0, 0, 0]),  # own 0.9: rank 1
    (1, [0.5, 0.4, 0.3, 0, 0, 0, 0]),  # own 0.4 below 0.5: rank 2
    (2, [0.3, 0.25, 0.05, 0.2, 0.15, 0.1, 0.35]),  # own max(0.05, 0.35) = 0.35: rank 1
    (3, [0.5, 0.45, 0.4, 0.1, 0.35, 0.3, 0]),  # own 0.1 below five: rank 6
    (4, [0.5, 0.45, 0.4, 0.38, 0.3, 0.1, 0]),  # own 0.3 below four: rank 5
]
NON_MATED_TOPS = [0.95, 0.6, 0.5, 0.45, 0.4, 0.33, 0.3, 0.2, 0.15, 0.1]


def _probe(coordinates):
    vector = np.zeros(8)
    vector[:7] = coordinates
    vector[7] = math.sqrt(1 - float(np.sum(vector**2)))
    return vector


def constructed():
    probes = [_probe(c) for _, c in MATED] + [_probe([0, 0, 0, 0, 0, top, 0]) for top in NON_MATED_TOPS]
    labels = [label for label, _ in MATED] + [99] * len(NON_MATED_TOPS)
    return np.array(probes), np.array(labels)


def test_constructed_ranks_and_tpir():
    probes, labels = constructed()
    result = identify(GALLERY, GALLERY_LABELS, probes, labels, fpir_targets=(0.05, 0.1, 0.2, 0.5), chunk_size=3)
    assert isinstance(result, IdentificationResult)
    assert result.probe_ranks.tolist() == [1, 2, 1, 6, 5] + [0] * 10
    np.testing.assert_allclose(result.cmc, [0.4, 0.6, 0.6, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert result.rank1 == pytest.approx(0.4) and result.rank_rate(5) == pytest.approx(0.8)
    np.testing.assert_allclose(result.mated_scores[:5], [0.9, 0.4, 0.35, 0.1, 0.3])
    # 10 non-mated probes: FPIR 0.05 unresolvable. FPIR 0.1 lets one (0.95) through: accept > 0.6,
    # only the 0.9 rank-1 probe. FPIR 0.2: > 0.5, still one. FPIR 0.5: > 0.33, also the 0.35 one.
    assert result.tpir_at_fpir == {
        0.05: None, 0.1: pytest.approx(0.2), 0.2: pytest.approx(0.2), 0.5: pytest.approx(0.4)
    }
    assert result.fpir_thresholds[0.05] is None
    assert result.fpir_thresholds[0.1] == pytest.approx(0.6) and result.fpir_thresholds[0.1] > 0.6
    summary = result.to_dict()
    assert summary["rank1"] == pytest.approx(0.4) and summary["rank5"] == pytest.approx(0.8)
    assert summary["rank10"] == pytest.approx(1.0) and len(summary["cmc"]) == 10
    assert summary["tpir_at_fpir"] == {
        "5e-2": None, "1e-1": pytest.approx(0.2), "2e-1": pytest.approx(0.2), "5e-1": pytest.approx(0.4)
    }
    assert summary["num_mated_probes"] == 5 and summary["num_non_mated_probes"] == 10
    assert summary["gallery_size"] == 7 and summary["gallery_identities"] == 6 and summary["num_distractors"] == 0
    json.dumps(summary)


def test_distractors_push_ranks_down_and_ties_count_against_the_probe():
    probes, labels = constructed()
    # Scores (p_0 + p_3) / sqrt(2): 0.636 < 0.9, 0.354 < 0.4, 0.354 > 0.35, 0.424 > 0.1, 0.622 > 0.3.
    distractor = np.zeros(8)
    distractor[[0, 3]] = 1 / math.sqrt(2)
    result = identify(GALLERY, GALLERY_LABELS, probes[:5], labels[:5], distractors=distractor[None], ranks=(1, 5))
    assert result.probe_ranks.tolist() == [1, 2, 2, 7, 6]
    assert result.rank1 == pytest.approx(0.2) and result.rank_rate(5) == pytest.approx(0.6)
    assert result.tpir_at_fpir == {} and result.num_non_mated == 0  # open set skipped
    # A distractor equal to identity 0's entry ties probe 0's own score: rank 2, not 1.
    tied = identify(GALLERY, GALLERY_LABELS, probes[:1], labels[:1], distractors=GALLERY[:1], ranks=(1,))
    assert tied.probe_ranks.tolist() == [2]


def test_float32_and_int_labels():
    probes, labels = constructed()
    result = identify(GALLERY.astype(np.float32), GALLERY_LABELS, probes.astype(np.float32), labels, ranks=(1, 5))
    assert result.probe_ranks.tolist() == [1, 2, 1, 6, 5] + [0] * 10


def test_bad_inputs():
    probes, labels = constructed()
    with pytest.raises(ValueError, match=r"gallery must be \(rows, D\)"):
        identify(GALLERY[0], [0], probes, labels)
    with pytest.raises(ValueError, match="probes must have D = 8 columns"):
        identify(GALLERY, GALLERY_LABELS, probes[:, :5], labels)
    with pytest.raises(ValueError, match="distractors must have D = 8 columns"):
        identify(GALLERY, GALLERY_LABELS, probes, labels, distractors=np.eye(3))
    with pytest.raises(ValueError, match=r"gallery_labels must be \(7,\)"):
        identify(GALLERY, GALLERY_LABELS[:6], probes, labels)
    with pytest.raises(ValueError, match=r"probe_labels must be \(15,\)"):
        identify(GALLERY, GALLERY_LABELS, probes, labels[:3])
    with pytest.raises(ValueError, match="not L2-normalized.*np.linalg.norm"):
        identify(GALLERY * 2, GALLERY_LABELS, probes, labels)
    with pytest.raises(ValueError, match="gallery labels are integers and probe labels strings"):
        identify(GALLERY, GALLERY_LABELS, probes, labels.astype(str))
    with pytest.raises(ValueError, match="no probe's label is in the gallery"):
        identify(GALLERY, GALLERY_LABELS, probes, labels + 100)
    with pytest.raises(ValueError, match="ranks must be positive"):
        identify(GALLERY, GALLERY_LABELS, probes, labels, ranks=(0, 1))
    with pytest.raises(ValueError, match=r"fpir_targets must lie in \(0, 1\)"):
        identify(GALLERY, GALLERY_LABELS, probes, labels, fpir_targets=(1.0,))
    with pytest.raises(ValueError, match="NaN"):
        identify(np.full_like(GALLERY, np.nan), GALLERY_LABELS, probes, labels)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        identify(GALLERY, GALLERY_LABELS, probes, labels, chunk_size=0)
    result = identify(GALLERY, GALLERY_LABELS, probes, labels, ranks=(1,))
    with pytest.raises(ValueError, match="outside the computed CMC"):
        result.rank_rate(5)
