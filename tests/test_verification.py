"""arcface.eval: verification metrics against slow literal references and hand-computed cases, and
embedding / pair / .bin verification with tiny deterministic models."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from arcface.data import DataError
from arcface.data.binset import read_bin, write_bin
from arcface.data.datasets import FaceTransform, SyntheticDataset, decode_image
from arcface.data.protocols import Pair
from arcface.eval import (
    PairImages,
    best_threshold,
    bin_folds,
    eer,
    embed_images,
    kfold_accuracy,
    roc,
    tar_at_far,
    verify_bin,
    verify_pairs,
)
from conftest import shared_path

# ----------------------------------------------------------------------------- slow references


def reference_best_threshold(scores, same):
    """Literal: every candidate (-inf, midpoints of sorted distinct scores, +inf), every pair counted."""
    values = sorted(set(float(s) for s in scores))
    candidates = [-math.inf] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [math.inf]
    best, best_correct = None, -1
    for threshold in candidates:  # ascending: the first maximum is the lowest threshold
        correct = sum(1 for s, y in zip(scores, same) if (s > threshold) == bool(y))
        if correct > best_correct:
            best, best_correct = threshold, correct
    return best, best_correct / len(scores)


def reference_kfold(scores, same, folds):
    accuracies, thresholds = [], []
    for fold in sorted(set(folds)):
        train = [i for i in range(len(scores)) if folds[i] != fold]
        test = [i for i in range(len(scores)) if folds[i] == fold]
        threshold, _ = reference_best_threshold([scores[i] for i in train], [same[i] for i in train])
        correct = sum(1 for i in test if (scores[i] > threshold) == bool(same[i]))
        accuracies.append(correct / len(test))
        thresholds.append(threshold)
    mean = sum(accuracies) / len(accuracies)
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / len(accuracies))  # population std
    return mean, std, accuracies, thresholds


def reference_roc_points(scores, same):
    """(threshold, far, tar) for +inf and every distinct score, accepting score >= threshold."""
    num_same = sum(1 for y in same if y)
    num_different = len(same) - num_same
    points = []
    for threshold in [math.inf] + sorted(set(float(s) for s in scores), reverse=True):
        accepted_same = sum(1 for s, y in zip(scores, same) if y and s >= threshold)
        accepted_different = sum(1 for s, y in zip(scores, same) if not y and s >= threshold)
        points.append((threshold, accepted_different / num_different, accepted_same / num_same))
    return points


def reference_tar_at_far(scores, same, target):
    num_different = sum(1 for y in same if not y)
    if target < 1 / num_different:
        return None
    return max(tar for _, far, tar in reference_roc_points(scores, same) if far <= target)


def reference_eer(scores, same):
    """Walk the ROC polyline segment by segment until FAR - FRR changes sign; solve on that segment."""
    points = reference_roc_points(scores, same)
    for (_, far0, tar0), (_, far1, tar1) in zip(points, points[1:]):
        gap0, gap1 = far0 - (1 - tar0), far1 - (1 - tar1)
        if gap0 <= 0 <= gap1 and gap1 > gap0:
            t = -gap0 / (gap1 - gap0)
            return far0 + t * (far1 - far0)
    raise AssertionError("the ROC never crosses FAR = FRR")


def random_case(seed: int, num_pairs: int = 120, num_folds: int = 5, decimals: int = 1):
    """Scores with many ties (rounded), same pairs scoring higher on average, random folds."""
    rng = np.random.default_rng(seed)
    same = rng.random(num_pairs) < 0.5
    scores = np.round(rng.normal(loc=np.where(same, 0.6, 0.0), scale=0.5), decimals)
    folds = rng.integers(0, num_folds, num_pairs)
    return scores, same, folds


# ---------------------------------------------------------------------------- k-fold accuracy


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_kfold_matches_reference(seed, decimals):
    scores, same, folds = random_case(seed, decimals=decimals)
    result = kfold_accuracy(scores, same, folds)
    mean, std, accuracies, thresholds = reference_kfold(list(scores), list(same), list(folds))
    np.testing.assert_allclose(result.fold_accuracies, accuracies, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.fold_thresholds, thresholds, rtol=1e-12, atol=1e-12)
    assert result.accuracy_mean == pytest.approx(mean, abs=1e-12)
    assert result.accuracy_std == pytest.approx(std, abs=1e-12)
    _, overall = reference_best_threshold(list(scores), list(same))
    assert result.best_threshold_accuracy == pytest.approx(overall, abs=1e-12)
    assert result.threshold == pytest.approx(np.mean(thresholds))
    assert result.num_pairs == len(scores)


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_reference(seed):
    scores, same, _ = random_case(seed + 100, num_pairs=60)
    threshold, accuracy = best_threshold(scores, same)
    ref_threshold, ref_accuracy = reference_best_threshold(list(scores), list(same))
    assert threshold == pytest.approx(ref_threshold)
    assert accuracy == pytest.approx(ref_accuracy, abs=1e-12)


def test_kfold_hand_computed():
    # fold 0: (.9 S) (.2 D) (.6 D); fold 1: (.8 S) (.4 S) (.1 D)
    scores = [0.9, 0.2, 0.6, 0.8, 0.4, 0.1]
    same = [True, False, False, True, True, False]
    folds = [0, 0, 0, 1, 1, 1]
    result = kfold_accuracy(scores, same, folds)
    # trained on fold 1 -> .25 (all 3 right), which gets .6 D wrong; trained on fold 0 -> .75, gets .4 S wrong
    np.testing.assert_allclose(result.fold_thresholds, [0.25, 0.75])
    np.testing.assert_allclose(result.fold_accuracies, [2 / 3, 2 / 3])
    assert result.accuracy_mean == pytest.approx(2 / 3)
    assert result.accuracy_std == 0.0
    assert result.threshold == pytest.approx(0.5)
    # all pairs: thresholds .3 and .7 both get 5 of 6; the lower one is kept
    assert result.best_threshold_accuracy == pytest.approx(5 / 6)
    assert best_threshold(np.array(scores), np.array(same)) == (pytest.approx(0.3), pytest.approx(5 / 6))


def test_kfold_perfectly_separable():
    rng = np.random.default_rng(0)
    same = np.tile([True, False], 50)
    scores = np.where(same, rng.uniform(0.5, 1.0, 100), rng.uniform(-1.0, 0.4, 100))
    result = kfold_accuracy(scores, same, np.repeat(np.arange(10), 10))
    assert result.accuracy_mean == 1.0
    assert result.accuracy_std == 0.0
    assert result.best_threshold_accuracy == 1.0
    assert np.all((result.fold_thresholds > scores[~same].max()) & (result.fold_thresholds < scores[same].min()))


def test_kfold_all_scores_equal_gives_majority_fraction():
    same = np.tile([True] * 7 + [False] * 3, 10)  # every fold 7 same / 3 different
    result = kfold_accuracy(np.full(100, 0.3), same, np.repeat(np.arange(10), 10))
    assert result.accuracy_mean == pytest.approx(0.7)
    assert result.accuracy_std == pytest.approx(0.0)
    assert result.best_threshold_accuracy == pytest.approx(0.7)
    assert np.all(result.fold_thresholds == -np.inf)  # "all same", the majority

    minority_same = ~same
    result = kfold_accuracy(np.full(100, 0.3), minority_same, np.repeat(np.arange(10), 10))
    assert result.accuracy_mean == pytest.approx(0.7)
    assert np.all(result.fold_thresholds == np.inf)


def test_threshold_between_adjacent_floats():
    low = 0.5
    high = np.nextafter(low, 1.0)
    threshold, accuracy = best_threshold(np.array([low, high]), np.array([False, True]))
    assert accuracy == 1.0
    assert low <= threshold < high


def test_kfold_rejects_bad_input():
    with pytest.raises(ValueError, match="one fold"):
        kfold_accuracy([0.1, 0.2], [True, False], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy([0.1, float("nan")], [True, False], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        kfold_accuracy([0.1, 0.2], [True, False], [0, 1, 2])
    with pytest.raises(ValueError, match="1-D of one length"):
        kfold_accuracy([0.1, 0.2], [True], [0, 1])


# ---------------------------------------------------------------------------------- ROC and co.


@pytest.mark.parametrize("seed", range(6))
def test_roc_matches_reference(seed):
    scores, same, _ = random_case(seed + 200)
    far, tar, thresholds = roc(scores, same)
    points = reference_roc_points(list(scores), list(same))
    np.testing.assert_array_equal(thresholds, [p[0] for p in points])
    np.testing.assert_allclose(far, [p[1] for p in points], atol=1e-12)
    np.testing.assert_allclose(tar, [p[2] for p in points], atol=1e-12)
    assert (far[0], tar[0], far[-1], tar[-1]) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("seed", range(6))
def test_tar_at_far_and_eer_match_reference(seed):
    scores, same, _ = random_case(seed + 300, num_pairs=300, decimals=2)
    targets = (0.5, 0.2, 0.1, 0.05, 0.01, 1e-3)
    result = tar_at_far(scores, same, targets)
    for target in targets:
        expected = reference_tar_at_far(list(scores), list(same), target)
        assert result[target] == (None if expected is None else pytest.approx(expected, abs=1e-12))
    assert eer(scores, same) == pytest.approx(reference_eer(list(scores), list(same)), abs=1e-12)


def test_tar_at_far_hand_computed():
    same_scores = [0.9, 0.8, 0.5, 0.2]
    different_scores = [0.95, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0, -0.1, -0.2]  # 10: FAR resolves to 0.1
    scores = np.array(same_scores + different_scores)
    same = np.array([True] * 4 + [False] * 10)
    result = tar_at_far(scores, same, targets=(0.5, 0.3, 0.2, 0.1, 0.01))
    # FAR 0.1 lets the 0.95 impostor in, then .9 .8 .5 are accepted before the next impostor (0.3);
    # the same pair at 0.2 ties with an impostor, so it needs FAR 0.4 (.95 .3 .25 .2).
    assert result == {0.5: 1.0, 0.3: 0.75, 0.2: 0.75, 0.1: 0.75, 0.01: None}
    assert list(tar_at_far(scores, same)) == [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]


def test_tar_at_far_resolution_limit():
    scores = np.linspace(0, 1, 2000)
    same = np.arange(2000) >= 1000  # 1000 different pairs: 1e-3 resolves, 1e-4 does not
    result = tar_at_far(scores, same)
    assert result[1e-3] == 1.0 and result[1e-4] is None and result[1e-6] is None


def test_eer_hand_computed():
    # FAR - FRR reaches 0 exactly at a point: same .9 .8 .7 .4, different .6 .5 .3 .1 -> threshold .6: 1/4, 1/4
    assert eer([0.9, 0.8, 0.7, 0.4, 0.6, 0.5, 0.3, 0.1], [1, 1, 1, 1, 0, 0, 0, 0]) == pytest.approx(0.25)
    # a tie of one same and one different pair at .5: halfway along the diagonal segment
    assert eer([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.25)
    assert eer([0.3] * 4, [1, 0, 1, 0]) == pytest.approx(0.5)
    assert eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both kinds"):
        roc([0.1, 0.2], [True, True])


# ------------------------------------------------------------------------------------ embedding


def tiny_model(seed: int = 0, out: int = 16, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(3 * 112 * 112, out)]
    if batchnorm:  # would differ per batch (and fail for batch 1) in train mode
        layers.append(nn.BatchNorm1d(out))
    model = nn.Sequential(*layers)
    if batchnorm:
        model[2].running_mean.uniform_(-0.1, 0.1)
        model[2].running_var.uniform_(0.5, 2.0)
    return model


def random_images(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 112, 112, generator=generator) * 2 - 1 for _ in range(count)]


def test_embed_flip_test_definition():
    model = tiny_model()
    images = random_images(5)
    embeddings = embed_images(model, images, batch_size=2)
    assert embeddings.shape == (5, 16) and embeddings.dtype == np.float32
    batch = torch.stack(images)
    with torch.no_grad():
        expected = F.normalize(model(batch) + model(batch.flip(3)), dim=1)
        plain = F.normalize(model(batch), dim=1)
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embed_images(model, images, flip_test=False), plain.numpy(), atol=1e-6)


def test_embed_batch_size_independent_and_mode_restored():
    model = tiny_model(batchnorm=True)
    model.train()
    images = random_images(7, seed=1)
    results = [embed_images(model, images, batch_size=size) for size in (1, 3, 7, 64)]
    for other in results[1:]:  # fp32 kernels block by batch size: 1e-6 apart on some CPUs; batch statistics: 0.5
        np.testing.assert_allclose(other, results[0], atol=1e-5)
    assert all(module.training for module in model.modules())  # back in train mode for the trainer


def test_embed_dataset_generator_and_options():
    model = tiny_model(seed=3)
    dataset = SyntheticDataset(num_samples=5, num_classes=2)  # items are (image, label)
    from_dataset = embed_images(model, dataset, batch_size=2)
    from_generator = embed_images(model, (dataset[i][0] for i in range(5)), batch_size=4)
    np.testing.assert_allclose(from_dataset, from_generator, atol=1e-6)
    np.testing.assert_allclose(embed_images(model, dataset, channels_last=True, device="cpu"), from_dataset, atol=1e-6)
    bf16 = embed_images(model, dataset, autocast_dtype=torch.bfloat16)
    assert np.all(np.sum(bf16 * from_dataset, axis=1) > 0.99)
    with pytest.raises(ValueError, match="no images"):
        embed_images(model, [])


# ----------------------------------------------------------------------------- pairs and .bin


def person_images(num_people: int, per_person: int = 2, seed: int = 0, size: int = 112) -> list[list[np.ndarray]]:
    """uint8 RGB images: one random pattern per person, plus a little noise per image."""
    rng = np.random.default_rng(seed)
    people = []
    for _ in range(num_people):
        base = rng.integers(40, 216, (size, size, 3))
        people.append(
            [np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8) for _ in range(per_person)]
        )
    return people


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_pairs(num_people: int, num_folds: int) -> list[Pair]:
    """Person p's two images as a same pair, and image 0 of p with image 1 of p+1 as a different pair."""
    pairs = []
    for p in range(num_people):
        fold = p % num_folds
        pairs.append(Pair(f"p{p}/0.png", f"p{p}/1.png", True, fold))
        pairs.append(Pair(f"p{p}/0.png", f"p{(p + 1) % num_people}/1.png", False, fold))
    return pairs


def write_people(root, people) -> None:
    for p, images in enumerate(people):
        (root / f"p{p}").mkdir()
        for i, image in enumerate(images):
            (root / f"p{p}" / f"{i}.png").write_bytes(png(image))


def test_verify_pairs(tmp_path):
    people = person_images(6)
    write_people(tmp_path, people)
    pairs = make_pairs(6, num_folds=3)
    model = tiny_model(out=64)

    images = PairImages(pairs, tmp_path)
    assert len(images) == 12  # each distinct image once, though most appear in two pairs
    expected_first = FaceTransform(flip=0.0)(decode_image(png(people[0][0]), "x"))
    torch.testing.assert_close(images[0], expected_first)

    result = verify_pairs(model, pairs, tmp_path, batch_size=5)
    embeddings = embed_images(model, [images[i] for i in range(len(images))])
    expected = np.sum(embeddings[images.left] * embeddings[images.right], axis=1)
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    np.testing.assert_array_equal(result.folds, [0, 1, 2])
    assert result.accuracy_mean == 1.0  # a random projection keeps same pairs far more alike

    overridden = verify_pairs(model, pairs, tmp_path, folds=[i % 2 for i in range(len(pairs))])
    np.testing.assert_array_equal(overridden.folds, [0, 1])


def test_pair_images_resize_warns_once(tmp_path, caplog):
    people = person_images(2, size=100)
    write_people(tmp_path, people)
    images = PairImages(make_pairs(2, num_folds=1), tmp_path)
    with caplog.at_level(logging.WARNING, logger="arcface.eval.embed"):
        tensors = [images[i] for i in range(len(images))]
    assert all(t.shape == (3, 112, 112) for t in tensors)
    assert len([r for r in caplog.records if "resizing" in r.getMessage()]) == 1


def test_pair_images_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing"):
        PairImages([Pair("a.png", "b.png", True)], tmp_path)


def test_verify_bin_matches_verify_pairs(tmp_path):
    people = person_images(10, seed=1)
    write_people(tmp_path, people)
    pairs = make_pairs(10, num_folds=10)  # consecutive blocks of 2 pairs, as bin_folds gives
    bin_path = tmp_path / "set.bin"
    write_bin(bin_path, [(tmp_path / name).read_bytes() for pair in pairs for name in (pair.left, pair.right)],
              [pair.same for pair in pairs])
    model = tiny_model(seed=2, out=64)

    from_bin = verify_bin(model, bin_path, batch_size=8)
    from_pairs = verify_pairs(model, pairs, tmp_path, batch_size=8)
    np.testing.assert_allclose(from_bin.scores, from_pairs.scores, atol=1e-6)
    np.testing.assert_array_equal(from_bin.pair_folds, np.repeat(np.arange(10), 2))
    assert from_bin.accuracy_mean == from_pairs.accuracy_mean == 1.0
    again = verify_bin(model, read_bin(bin_path), n_folds=5, flip_test=False)
    assert len(again.fold_accuracies) == 5


def test_bin_folds():
    assert np.bincount(bin_folds(6000)).tolist() == [600] * 10
    assert np.bincount(bin_folds(13, 10)).tolist() == [2, 2, 2] + [1] * 7
    assert np.all(np.diff(bin_folds(13, 10)) >= 0)
    with pytest.raises(ValueError):
        bin_folds(5, 10)


def test_lfw_faces_in_a_bin_with_different_person_pairs_give_their_known_accuracy(tmp_path):
    """The small_lfw.bin fixture holds 10 same-person pairs only (saying "same" always scores 1.0 on it).
    Rebuilt from its LFW faces: 10 pairs of one photo with itself (cosine 1 for any model) and 10 pairs
    of two people, alternating, so that each of the 10 folds holds one of each. With the right labels a
    threshold separates them: accuracy 1.0 in every fold. With the labels swapped none does better than
    giving every pair the same answer: 0.5 in every fold."""
    source = read_bin(shared_path("fixtures/bin/small_lfw.bin"))
    assert source.num_pairs == 10 and all(source.issame)
    # The person of each fixture pair (fixtures/bin/SOURCE.md): Abel_Pacheco, Akhmed_Zakayev x2,
    # Amber_Tamblyn, Anders_Fogh_Rasmussen x2, Angela_Bassett x3, Ann_Veneman.
    person = [0, 1, 1, 2, 3, 3, 4, 4, 4, 5]
    images, same = [], []
    for i in range(10):
        j = (i + 3) % 10
        assert person[i] != person[j]
        images += [source.images[2 * i], source.images[2 * i], source.images[2 * i], source.images[2 * j + 1]]
        same += [True, False]
    model = tiny_model(seed=4, out=32)
    folds = np.repeat(np.arange(10), 2).tolist()  # bin_folds: consecutive blocks
    for labels, expected in ((same, 1.0), ([not s for s in same], 0.5)):
        path = tmp_path / f"lfw_{expected}.bin"
        write_bin(path, images, labels)
        result = verify_bin(model, path, batch_size=8)
        assert result.num_pairs == 20 and np.all(np.isfinite(result.scores))
        assert result.fold_accuracies == pytest.approx([expected] * 10)
        assert result.accuracy_mean == pytest.approx(expected)
        assert result.accuracy_mean == pytest.approx(reference_kfold(result.scores.tolist(), labels, folds)[0])
    identical, different = result.scores[0::2], result.scores[1::2]
    assert np.all(identical > 1 - 1e-5) and different.max() < identical.min()


def test_the_trainer_and_the_eval_command_score_one_protocol_alike(tmp_path):
    """verify_pairs (the trainer's periodic evaluation) and evaluate_pairs (``arcface eval``) share one
    PairIndex: on a one-fold file both use the same stratified folds and give the same accuracy."""
    from arcface.data.protocols import stratified_folds, write_pairs
    from arcface.eval import EvalOptions, PairIndex, evaluate_pairs
    from arcface.model import ModelInfo

    people = person_images(20)
    write_people(tmp_path, people)
    pairs = make_pairs(20, num_folds=1)
    paths, index = PairIndex.from_pairs(pairs, n_folds=10)
    assert index.stratified and list(index.folds) == stratified_folds(pairs, 10)
    assert [paths[i] for i in index.left] == [p.left for p in pairs] and [paths[i] for i in index.right] == [p.right for p in pairs]
    model = tiny_model(out=64)
    trainer = verify_pairs(model, pairs, tmp_path, batch_size=7)
    write_pairs(tmp_path / "pairs.tsv", pairs)
    report, _ = evaluate_pairs(model, ModelInfo("tiny", "checkpoint", "tiny", 64), tmp_path / "pairs.tsv", tmp_path,
                               EvalOptions(align="none", workers=0, progress=False))
    assert report["folds_from"] == "10 stratified folds" and report["num_folds"] == 10
    assert report["accuracy"] == pytest.approx(trainer.accuracy_mean, abs=1e-12)
    assert report["threshold"] == pytest.approx(trainer.threshold, abs=1e-6)
