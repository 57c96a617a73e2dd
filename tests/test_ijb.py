"""arcface.eval.ijb: IJB meta reading, template pooling and pair scoring against slow literal references
and a tiny hand-made IJB-C-layout set whose pooled features are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from arcface.data.errors import DataError
from arcface.eval import ijb
from arcface.eval.ijb import (
    IJBMeta,
    ijb_verification,
    pair_scores,
    read_ijb_meta,
    template_features,
    verify_templates,
)
from arcface.eval.verification import eer

# ----------------------------------------------------------------------------- slow references


def reference_template_features(embeddings, templates, medias, scores=None):
    """Literal: per template, per media the mean of (score x embedding), summed, L2-normalized."""
    result = {}
    for template in sorted(set(int(t) for t in templates)):
        media_features = []
        for media in sorted(set(int(m) for t, m in zip(templates, medias) if t == template)):
            members = [i for i in range(len(templates)) if templates[i] == template and medias[i] == media]
            weight = {i: 1.0 if scores is None else float(scores[i]) for i in members}
            weighted = [[float(x) * weight[i] for x in embeddings[i]] for i in members]
            media_features.append([sum(column) / len(members) for column in zip(*weighted)])
        total = [sum(column) for column in zip(*media_features)]
        norm = math.sqrt(sum(x * x for x in total))
        result[template] = [x / norm for x in total]
    return result


def reference_pair_scores(features_by_template, pairs):
    return [sum(p * q for p, q in zip(features_by_template[int(a)], features_by_template[int(b)])) for a, b in pairs]


def reference_tar_at_far(scores, same, target):
    """Largest TAR over thresholds (accept score >= t) whose FAR <= target; None below 1 / different."""
    num_same = sum(1 for y in same if y)
    num_different = len(same) - num_same
    if target * num_different < 1 - 1e-9:
        return None
    best = 0.0
    for threshold in [math.inf] + sorted(set(scores)):
        far = sum(1 for s, y in zip(scores, same) if not y and s >= threshold) / num_different
        if far <= target:
            best = max(best, sum(1 for s, y in zip(scores, same) if y and s >= threshold) / num_same)
    return best


# ------------------------------------------------------------------------------ a tiny IJB set

# name, template, media, embedding (D = 3), detector score. Media 10 appears in templates 1 and 3:
# IJB media ids are shared between templates, so pooling must group by (template, media).
IMAGES = [
    ("1.jpg", 1, 10, (1.0, 0.0, 0.0), 1.0),
    ("2.jpg", 1, 10, (0.0, 1.0, 0.0), 3.0),
    ("3.jpg", 1, 11, (0.0, 0.0, 2.0), 0.5),
    ("4.jpg", 2, 20, (3.0, 0.0, 0.0), 0.9),
    ("5.jpg", 3, 10, (0.0, 0.0, 1.0), 1.0),
    ("6.jpg", 3, 31, (0.0, 3.0, 0.0), 2.0),
]
PAIRS = [(1, 2, 0), (1, 3, 0), (2, 3, 0), (1, 1, 1), (3, 3, 1)]

# Worked by hand. Without scores: template 1 = mean(e1, e2) + 2 e3 = (.5, .5, 2); template 2 = (3, 0, 0);
# template 3 = e3 + 3 e2 = (0, 3, 1). With scores: template 1 = mean(e1, 3 e2) + (0, 0, 1) = (.5, 1.5, 1);
# template 2 = (2.7, 0, 0); template 3 = (0, 0, 1) + (0, 6, 0) = (0, 6, 1).
POOLED = {1: (0.5, 0.5, 2.0), 2: (1.0, 0.0, 0.0), 3: (0.0, 3.0, 1.0)}
POOLED_SCORED = {1: (0.5, 1.5, 1.0), 2: (1.0, 0.0, 0.0), 3: (0.0, 6.0, 1.0)}


def _unit(vector):
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def write_ijb(folder: Path, prefix: str = "ijbc", in_meta: bool = True, landmarks: bool = True) -> Path:
    meta = folder / "meta" if in_meta else folder
    meta.mkdir(parents=True, exist_ok=True)
    (folder / "loose_crop").mkdir(exist_ok=True)
    (meta / f"{prefix}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, _, _ in IMAGES))
    (meta / f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {y}\n" for a, b, y in PAIRS))
    if landmarks:
        lines = []
        for index, (name, _, _, _, score) in enumerate(IMAGES):
            points = " ".join(f"{30.0 + index + k:.3f} {50.5 + k:.3f}" for k in range(5))
            lines.append(f"{name} {points} {score}\n")
        (meta / f"{prefix}_name_5pts_score.txt").write_text("".join(lines))
    return folder


def embeddings() -> np.ndarray:
    return np.array([e for _, _, _, e, _ in IMAGES], dtype=np.float32)


# --------------------------------------------------------------------------------------- reading


def test_read_meta(tmp_path):
    meta = read_ijb_meta(write_ijb(tmp_path), "IJBC")
    assert isinstance(meta, IJBMeta)
    assert meta.name == "IJBC" and meta.num_images == 6 and meta.num_templates == 3 and meta.num_pairs == 5
    assert meta.image_names.tolist() == [n for n, *_ in IMAGES]
    assert meta.templates.tolist() == [t for _, t, *_ in IMAGES] and meta.templates.dtype == np.int64
    assert meta.medias.tolist() == [m for _, _, m, *_ in IMAGES]
    assert meta.pairs.tolist() == [[a, b] for a, b, _ in PAIRS]
    assert meta.labels.dtype == np.bool_ and meta.labels.tolist() == [bool(y) for *_, y in PAIRS]
    assert meta.landmarks.shape == (6, 5, 2) and meta.landmarks.dtype == np.float32
    np.testing.assert_allclose(meta.landmarks[2, 4], (30.0 + 2 + 4, 50.5 + 4))
    np.testing.assert_allclose(meta.scores, [s for *_, s in IMAGES], rtol=1e-6)
    assert meta.image_paths()[0] == tmp_path / "loose_crop" / "1.jpg"


def test_read_meta_files_in_root_ijbb_without_landmarks(tmp_path):
    meta = read_ijb_meta(write_ijb(tmp_path, prefix="ijbb", in_meta=False, landmarks=False), "ijbb")
    assert meta.name == "IJBB" and meta.num_images == 6
    assert meta.landmarks is None and meta.scores is None
    with pytest.raises(ValueError, match="use_detector_score=False"):
        ijb_verification(embeddings(), meta)
    assert ijb_verification(embeddings(), meta, use_detector_score=False).num_pairs == 5


def test_read_meta_missing_file_and_bad_name(tmp_path):
    with pytest.raises(DataError, match="ijbc_face_tid_mid.txt: no such file"):
        read_ijb_meta(tmp_path)
    write_ijb(tmp_path)
    (tmp_path / "meta" / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(DataError, match="ijbc_template_pair_label.txt: no such file"):
        read_ijb_meta(tmp_path)
    with pytest.raises(ValueError, match="IJBB"):
        read_ijb_meta(tmp_path, "IJB-A")


@pytest.mark.parametrize(
    "filename, line, text, message",
    [
        ("ijbc_face_tid_mid.txt", 3, "3.jpg 1\n", r"line 3: expected 3 space-separated fields"),
        ("ijbc_face_tid_mid.txt", 2, "2.jpg one 10\n", r"line 2: the template id must be an integer, got 'one'"),
        ("ijbc_face_tid_mid.txt", 4, "4.jpg 2 2.5\n", r"line 4: the media id must be an integer"),
        ("ijbc_template_pair_label.txt", 2, "1 3 2\n", r"line 2: the label must be 0 or 1, got '2'"),
        ("ijbc_template_pair_label.txt", 5, "3 3\n", r"line 5: expected 3 space-separated fields"),
        ("ijbc_template_pair_label.txt", 1, "1 x 0\n", r"line 1: the second template id must be an integer"),
        ("ijbc_template_pair_label.txt", 4, "1 7 1\n", r"line 4: template 7 has no image"),
        ("ijbc_name_5pts_score.txt", 2, "2.jpg 1 2 3 4 5 6 7 8 9 10\n", r"line 2: expected 12 space-separated fields"),
        ("ijbc_name_5pts_score.txt", 3, "9.jpg 1 2 3 4 5 6 7 8 9 10 0.9\n", r"line 3 names '9.jpg'"),
        ("ijbc_name_5pts_score.txt", 6, "6.jpg 1 2 3 4 5 6 7 8 9 10 hi\n", r"line 6: landmarks and score must be"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, filename, line, text, message):
    write_ijb(tmp_path)
    path = tmp_path / "meta" / filename
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=message) as caught:
        read_ijb_meta(tmp_path)
    assert filename in str(caught.value)


def test_pair_line_numbers_count_blank_lines(tmp_path):
    write_ijb(tmp_path)
    (tmp_path / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 0\n\n1 3 0\n2 9 1\n")
    with pytest.raises(DataError, match="line 4: template 9 has no image"):
        read_ijb_meta(tmp_path)
    (tmp_path / "meta" / "ijbc_template_pair_label.txt").write_text("")
    with pytest.raises(DataError, match="no pair lines"):
        read_ijb_meta(tmp_path)


def test_landmark_file_out_of_step(tmp_path):
    write_ijb(tmp_path)
    path = tmp_path / "meta" / "ijbc_name_5pts_score.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))
    with pytest.raises(DataError, match="5 image lines, but .* has 6"):
        read_ijb_meta(tmp_path)


# --------------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("scored", [False, True], ids=["plain", "detector_score"])
def test_pooling_by_hand(tmp_path, scored):
    meta = read_ijb_meta(write_ijb(tmp_path))
    ids, features = template_features(embeddings(), meta.templates, meta.medias, meta.scores if scored else None)
    expected = POOLED_SCORED if scored else POOLED
    assert ids.tolist() == [1, 2, 3] and features.dtype == np.float64
    np.testing.assert_allclose(features, [_unit(expected[t]) for t in (1, 2, 3)], rtol=1e-6)
    reference = reference_template_features(embeddings(), meta.templates, meta.medias, meta.scores if scored else None)
    np.testing.assert_allclose(features, [reference[t] for t in (1, 2, 3)], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scored", [False, True], ids=["plain", "detector_score"])
def test_pooling_matches_reference(monkeypatch, seed, scored):
    # Blocks of 7 rows split templates across blocks: the per-block sums must add up.
    monkeypatch.setattr(ijb, "_POOL_ROWS", 7)
    rng = np.random.default_rng(seed)
    count = 60
    templates = rng.choice([3, 11, 12, 40, 41, 97, 1000], size=count)
    medias = rng.integers(0, 5, size=count)
    embeddings = rng.normal(size=(count, 6))
    scores = rng.uniform(0.3, 1.0, size=count) if scored else None
    ids, features = template_features(embeddings, templates, medias, scores)
    reference = reference_template_features(embeddings, templates, medias, scores)
    assert ids.tolist() == sorted(reference)
    np.testing.assert_allclose(features, [reference[t] for t in ids.tolist()], rtol=1e-12, atol=1e-12)


def test_pooling_errors():
    embeddings = np.eye(3)
    with pytest.raises(ValueError, match=r"templates must be \(3,\)"):
        template_features(embeddings, [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="integer ids"):
        template_features(embeddings, [1.0, 2.0, 3.0], [1, 2, 3])
    with pytest.raises(ValueError, match=r"embeddings must be \(N, D\)"):
        template_features(np.ones(3), [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        template_features(np.full((3, 3), np.nan), [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match=r"1 templates pool to a zero feature \(e.g. \[2\]\)"):
        template_features(embeddings, [1, 2, 3], [1, 2, 3], scores=[1.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------- verification


def test_ijb_verification_matches_reference(tmp_path):
    meta = read_ijb_meta(write_ijb(tmp_path))
    result = ijb_verification(embeddings(), meta, chunk_size=2)
    reference = reference_template_features(embeddings(), meta.templates, meta.medias, meta.scores)
    np.testing.assert_allclose(result.scores, reference_pair_scores(reference, meta.pairs), rtol=1e-6)
    # By hand: template 1 . template 3 with scores = (.5, 1.5, 1) . (0, 6, 1) / norms.
    assert result.scores[1] == pytest.approx(10 / (math.sqrt(3.5) * math.sqrt(37)), rel=1e-6)
    assert result.scores[3] == pytest.approx(1.0) and result.scores[0] == pytest.approx(_unit((0.5, 1.5, 1))[0])
    assert result.num_templates == 3 and result.num_same == 2


def _pairs_with_scores(same_scores, different_scores):
    """Template 0 = (1, 0); template i = (s, sqrt(1 - s^2)); pairs (0, i) then score exactly s."""
    values = list(same_scores) + list(different_scores)
    features = [[1.0, 0.0]] + [[s, math.sqrt(1 - s * s)] for s in values]
    ids = np.arange(len(features)) * 10 + 5  # ids are not row numbers
    pairs = np.stack([np.full(len(values), ids[0]), ids[1:]], axis=1)
    labels = np.array([1] * len(same_scores) + [0] * len(different_scores))
    return ids, np.array(features), pairs, labels


def test_tar_at_far_eer_auc_known():
    ids, features, pairs, labels = _pairs_with_scores([0.9, 0.8, 0.3], [0.7, 0.5, 0.1, 0.0])
    result = verify_templates(ids[::-1], features[::-1], pairs, labels, far_targets=(0.1, 0.25, 0.5), chunk_size=3)
    np.testing.assert_allclose(result.scores, [0.9, 0.8, 0.3, 0.7, 0.5, 0.1, 0.0], atol=1e-12)
    # 4 different pairs: FAR 0.1 is unresolvable; 0.25 allows the 0.7 impostor (accept >= 0.7: TAR 2/3);
    # 0.5 also the 0.5 one (accept >= 0.3: TAR 1).
    assert result.tar_at_far[0.1] is None
    assert result.tar_at_far[0.25] == pytest.approx(2 / 3)
    assert result.tar_at_far[0.5] == pytest.approx(1.0)
    assert result.auc == pytest.approx(10 / 12)  # P(same score > different score): (4 + 4 + 2) / 12
    assert result.eer == pytest.approx(eer(result.scores, labels))
    summary = result.to_dict()
    assert summary["tar_at_far"] == {"1e-1": None, "2.5e-1": pytest.approx(2 / 3), "5e-1": pytest.approx(1.0)}
    assert summary["num_pairs"] == 7 and summary["num_same"] == 3 and summary["num_different"] == 4
    json.dumps(summary)


@pytest.mark.parametrize("seed", [0, 1])
def test_verify_templates_matches_reference(seed):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(40) + 100
    features = rng.normal(size=(40, 5))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    pairs = rng.choice(ids, size=(300, 2))
    labels = rng.random(300) < 0.3
    result = verify_templates(ids, features, pairs, labels, far_targets=(1e-3, 1e-2, 0.1), chunk_size=64)
    by_id = {int(t): row.tolist() for t, row in zip(ids, features)}
    reference = reference_pair_scores(by_id, pairs)
    np.testing.assert_allclose(result.scores, reference, rtol=1e-12, atol=1e-12)
    for target in (1e-3, 1e-2, 0.1):
        expected = reference_tar_at_far(reference, labels.tolist(), target)
        assert result.tar_at_far[target] == (None if expected is None else pytest.approx(expected))
    assert pair_scores(ids, features, pairs) == pytest.approx(result.scores)  # default chunk, one chunk


def test_verify_templates_errors():
    ids, features = np.array([1, 2]), np.eye(2)
    with pytest.raises(ValueError, match=r"1 templates in pairs have no feature \(e.g. \[3\]\)"):
        verify_templates(ids, features, [[1, 3]], [1])
    with pytest.raises(ValueError, match="distinct"):
        verify_templates(np.array([1, 1]), features, [[1, 1]], [1])
    with pytest.raises(ValueError, match=r"pairs must be \(P, 2\)"):
        verify_templates(ids, features, [1, 2], [1])
    with pytest.raises(ValueError, match="one per pair"):
        verify_templates(ids, features, [[1, 2]], [1, 0])
    with pytest.raises(ValueError, match="booleans"):
        verify_templates(ids, features, [[1, 2], [1, 1]], [0, 2])


def test_embeddings_must_match_meta(tmp_path):
    meta = read_ijb_meta(write_ijb(tmp_path))
    with pytest.raises(ValueError, match=r"must be \(6, D\), one row per image of IJBC"):
        ijb_verification(embeddings()[:5], meta)
