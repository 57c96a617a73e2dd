"""Sub-center cleaning: the rule on hand-built geometry and against a literal reference, label-noise
injection, the clean job's outputs, and bad input."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from arcface.backbones import create_backbone
from arcface.clean import CATEGORIES, clean_dataset, corrupt_labels, decide, dominant_subcenters, dominant_weight, read_labelled_images
from arcface.cli import main
from arcface.data.errors import DataError
from arcface.eval import embed_images
from arcface.data.datasets import FaceTransform, ListDataset
from arcface.train.checkpoint import save_checkpoint
from arcface.train.config import HeadConfig, TrainConfig, config_to_dict
from arcface.train.head_state import build_training_head


def unit(*v):
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm()


def direction(degrees_from_x, towards):
    """A unit vector at ``degrees_from_x`` from +x, rotated towards the unit vector ``towards``."""
    a = math.radians(degrees_from_x)
    return math.cos(a) * unit(1, 0, 0) + math.sin(a) * towards


def test_rule_on_hand_built_geometry():
    # One class, sub-centers +x (0), +y (1), -x (2).
    centers = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(-1, 0, 0)])
    z = unit(0, 0, 1)
    samples = torch.stack([
        direction(10, z), direction(20, z), direction(-15, z),  # near +x: the dominant sub-center, easy clean
        direction(80, z),  # 80 deg from +x, 90 from +y, 100 from -x: nearest the dominant, too far -> hard noisy
        direction(100, z),  # nearest -x at 80 deg -> easy noisy
        unit(0.05, 1, 0.02),  # nearest +y at ~3 deg -> hard clean (non-dominant, close); 87 deg from +x -> dropped
    ])
    cosines = samples @ centers.T
    labels = torch.zeros(len(samples), dtype=torch.int64)
    nearest = cosines.argmax(1)
    dominant = dominant_subcenters(nearest, labels, num_classes=1, sub_centers=3)
    assert dominant.tolist() == [0]
    decision = decide(cosines, labels, dominant, threshold_deg=75)
    assert [CATEGORIES[c] for c in decision.category] == ["easy_clean"] * 3 + ["hard_noisy", "easy_noisy", "hard_clean"]
    assert decision.keep.tolist() == [True, True, True, False, False, False]
    torch.testing.assert_close(decision.dominant_angle[:5], torch.tensor([10.0, 20.0, 15.0, 80.0, 100.0], dtype=torch.float64))
    assert decide(cosines, labels, dominant, threshold_deg=85).keep.tolist() == [True, True, True, True, False, False]


def reference_rule(cosines, labels, num_classes, threshold):
    """Literal: vote per class with Python counters, then the angle to the winner."""
    keep, dominant = [], []
    for c in range(num_classes):
        votes = [0] * cosines.shape[1]
        for i in range(len(labels)):
            if labels[i] == c:
                votes[int(np.argmax(cosines[i]))] += 1
        dominant.append(votes.index(max(votes)))
    for i in range(len(labels)):
        keep.append(math.degrees(math.acos(min(1.0, max(-1.0, cosines[i][dominant[labels[i]]])))) <= threshold)
    return dominant, keep


def test_rule_matches_the_literal_reference_on_random_data():
    rng = np.random.default_rng(0)
    cosines = rng.uniform(-1, 1, (300, 3))
    labels = rng.integers(0, 7, 300)
    dominant, keep = reference_rule(cosines, labels, 7, 75.0)
    ours = dominant_subcenters(torch.from_numpy(cosines).argmax(1), torch.from_numpy(labels), 7, 3)
    assert ours.tolist() == dominant
    assert decide(torch.from_numpy(cosines), torch.from_numpy(labels), ours, 75.0).keep.tolist() == keep


def test_dominant_weight_picks_rows_and_bad_threshold_is_refused():
    weight = torch.arange(4 * 3 * 2, dtype=torch.float32).view(12, 2)
    picked = dominant_weight(weight, torch.tensor([2, 0, 1, 2]), 3)
    torch.testing.assert_close(picked, weight[[2, 3, 7, 11]])
    with pytest.raises(ValueError, match="between 0 and 180"):
        decide(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), 0.0)


# ------------------------------------------------------------------------------------ noise


@pytest.fixture()
def face_list(tmp_path):
    """A list file of 6 identities x 4 random 112x112 images, and 10 outsider images."""
    rng = np.random.default_rng(1)
    lines = []
    for identity in range(6):
        for k in range(4):
            path = tmp_path / "faces" / f"id{identity}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
            lines.append(f"faces/id{identity}/{k}.png {identity}")
    for k in range(10):
        path = tmp_path / "outside" / f"other{k}" / "0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.txt"


def test_closed_and_open_noise_have_exact_counts_and_a_truthful_ground_truth(face_list, tmp_path):
    data = read_labelled_images(face_list)
    noisy_data, noisy, true = corrupt_labels(data, 0.25, "closed", seed=3)
    assert noisy.sum() == 6 and noisy_data.paths == data.paths
    assert np.all(noisy_data.labels[noisy] != data.labels[noisy]) and np.all(noisy_data.labels[~noisy] == data.labels[~noisy])
    assert np.array_equal(true, data.labels)
    again, noisy_again, _ = corrupt_labels(data, 0.25, "closed", seed=3)
    assert np.array_equal(again.labels, noisy_data.labels) and np.array_equal(noisy, noisy_again)
    outside = [str(p.resolve()) for p in sorted((tmp_path / "outside").rglob("*.png"))]
    open_data, open_noisy, open_true = corrupt_labels(data, 0.25, "open", seed=3, outside=outside)
    replaced = [p for p, n in zip(open_data.paths, open_noisy) if n]
    assert len(replaced) == 6 and set(replaced) <= set(outside) and len(set(replaced)) == 6
    assert np.array_equal(open_data.labels, data.labels) and np.all(open_true[open_noisy] == -1)
    with pytest.raises(ValueError, match="outside images"):
        corrupt_labels(data, 0.5, "open", seed=3, outside=outside)
    with pytest.raises(ValueError, match="--rate"):
        corrupt_labels(data, 1.0, "closed", seed=3)


# ------------------------------------------------------------------------------------ the job


def make_checkpoint(path: Path, num_classes: int, sub_centers: int, seed: int = 0) -> Path:
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 16
    torch.manual_seed(seed)
    backbone = create_backbone("mobilefacenet", embedding_size=16)
    weight = torch.randn(num_classes * sub_centers, 16)
    torch.save({"config": config_to_dict(config), "step": 1, "num_classes": num_classes,
                "backbone": backbone.state_dict(), "head": {"weight": weight}}, path)
    return path


def test_clean_job_outputs_agree_with_a_direct_computation(face_list, tmp_path):
    assert main(["data", "corrupt", str(face_list), "--rate", "0.25", "--kind", "closed", "--seed", "1", "--out", str(tmp_path / "noisy")]) == 0
    noisy_list = tmp_path / "noisy" / "train.txt"
    checkpoint = make_checkpoint(tmp_path / "k3.pt", num_classes=6, sub_centers=3)
    out = tmp_path / "clean"
    assert main(["clean", str(checkpoint), str(noisy_list), "--threshold-deg", "80", "--out", str(out), "--device", "cpu", "--workers", "0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    # Direct: embed, cosines to own sub-centers, literal rule.
    state = torch.load(checkpoint, weights_only=True)
    backbone = create_backbone("mobilefacenet", embedding_size=16)
    backbone.load_state_dict(state["backbone"])
    dataset = ListDataset(noisy_list, transform=FaceTransform(flip=0.0))
    embeddings = embed_images(backbone.eval(), dataset)
    centers = torch.nn.functional.normalize(state["head"]["weight"], dim=1).view(6, 3, 16).double().numpy()
    labels = np.array(dataset.labels)
    cosines = np.stack([centers[labels[i]] @ embeddings[i].astype(np.float64) for i in range(len(labels))])
    dominant, keep = reference_rule(cosines, labels, 6, 80.0)
    assert 0 < sum(keep) < 24, "the threshold must split this set for the test to mean something"
    assert report["kept"] == sum(keep) and report["kept"] + report["dropped"] == report["samples"] == 24
    assert sum(report["categories"].values()) == 24
    kept_lines = (out / "train.txt").read_text().splitlines()
    assert len(kept_lines) == sum(keep)
    label_map = dict(tuple(map(int, line.split("\t"))) for line in (out / "label_map.tsv").read_text().splitlines()[1:])
    originals = [str(Path(p).resolve()) for p in dataset.paths]
    expected_lines = [f"{originals[i]} {label_map[labels[i]]}" for i in range(24) if keep[i]]
    assert kept_lines == expected_lines  # every kept sample keeps its image, labels renumbered consistently
    assert sorted(set(v for v in label_map.values() if v >= 0)) == list(range(report["classes_kept"]))
    centers_file = torch.load(out / "dominant_centers.pt", weights_only=True)
    surviving = [c for c in range(6) if label_map[c] >= 0]
    torch.testing.assert_close(centers_file["weight"], state["head"]["weight"][[c * 3 + dominant[c] for c in surviving]])
    # Against the ground truth written by `data corrupt`.
    truth = [line.split("\t")[2] == "1" for line in (tmp_path / "noisy" / "truth.tsv").read_text().splitlines()[1:]]
    dropped_noisy = sum(1 for k, n in zip(keep, truth) if not k and n)
    ground = report["ground_truth"]
    assert ground["noise_rate_before"] == pytest.approx(6 / 24)
    assert ground["recall"] == pytest.approx(dropped_noisy / 6)
    assert ground["precision"] == pytest.approx(dropped_noisy / max(1, 24 - sum(keep)))
    assert ground["noise_rate_after"] == pytest.approx(sum(1 for k, n in zip(keep, truth) if k and n) / max(1, sum(keep)))
    # The sweep: every threshold's counts as the literal rule at that threshold gives them.
    assert [row["threshold_deg"] for row in report["threshold_sweep"]] == [60, 65, 70, 75, 80, 85, 90]
    for row in report["threshold_sweep"]:
        _, kept_t = reference_rule(cosines, labels, 6, row["threshold_deg"])
        assert row["kept"] == sum(kept_t)
        assert row["noisy_kept"] == sum(1 for k, n in zip(kept_t, truth) if k and n)
        assert row["clean_dropped"] == sum(1 for k, n in zip(kept_t, truth) if not k and not n)
    assert len({row["kept"] for row in report["threshold_sweep"]}) > 1, "the sweep must vary on this set to mean something"


def test_clean_refuses_checkpoints_without_subcenters_or_of_another_dataset(face_list, tmp_path, caplog):
    one = make_checkpoint(tmp_path / "k1.pt", num_classes=6, sub_centers=1)
    with pytest.raises(DataError, match="sub-centers"):
        clean_dataset(one, face_list, tmp_path / "out", workers=0, progress=False)
    other = make_checkpoint(tmp_path / "c9.pt", num_classes=9, sub_centers=3)
    with pytest.raises(DataError, match="9"):
        clean_dataset(other, face_list, tmp_path / "out", workers=0, progress=False)
    assert main(["clean", str(tmp_path / "missing.pt"), str(face_list), "--out", str(tmp_path / "out")]) == 2
    assert main(["data", "corrupt", str(face_list), "--rate", "0.3", "--kind", "open", "--out", str(tmp_path / "o")]) == 2
    assert "--outside" in caplog.text


def test_head_init_from_dominant_centers(tmp_path):
    weight = torch.randn(5, 8)
    torch.save({"weight": weight}, tmp_path / "centers.pt")
    head = build_training_head(HeadConfig(name="arcface", init_from=str(tmp_path / "centers.pt")), 5, 8, 0, 1, seed=0)
    torch.testing.assert_close(head.weight.detach(), weight)
    with pytest.raises(ValueError, match=r"\(6, 8\)"):
        build_training_head(HeadConfig(name="arcface", init_from=str(tmp_path / "centers.pt")), 6, 8, 0, 1, seed=0)
    assert build_training_head(HeadConfig(name="subcenter_arcface"), 5, 8, 0, 1, seed=0).sub_centers == 3  # the preset's K
    # A training checkpoint, as a file or as its run folder (the newest checkpoint): its head's centers.
    trained = torch.randn(5, 8)
    save_checkpoint({"config": {}, "step": 3, "head": {"weight": trained}}, tmp_path / "run", step=3, keep_last=1)
    save_checkpoint({"config": {}, "step": 1, "head": {"weight": weight}}, tmp_path / "run", step=1, keep_last=2)
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "step_00000003.pt"):
        head = build_training_head(HeadConfig(name="arcface", init_from=str(source)), 5, 8, 0, 1, seed=0)
        torch.testing.assert_close(head.weight.detach(), trained)
    with pytest.raises(ValueError, match="head.init_from.*no checkpoints"):
        build_training_head(HeadConfig(name="arcface", init_from=str(tmp_path)), 5, 8, 0, 1, seed=0)
    with pytest.raises(ValueError, match="head.init_from.*not found"):
        build_training_head(HeadConfig(name="arcface", init_from=str(tmp_path / "missing.pt")), 5, 8, 0, 1, seed=0)


def _records_by_image(rec: Path) -> dict[bytes, int]:
    from arcface.data.face_records import FaceRecordFile

    records = FaceRecordFile(rec)
    return {records.image_bytes(key): label for key, label in zip(records.image_keys, records.labels)}


def test_clean_reads_a_rec_and_writes_one_with_the_list_files_decisions(face_list, tmp_path):
    from arcface.data.face_records import write_face_records

    assert main(["data", "corrupt", str(face_list), "--rate", "0.25", "--kind", "closed", "--seed", "1", "--out", str(tmp_path / "noisy")]) == 0
    noisy_list = tmp_path / "noisy" / "train.txt"
    checkpoint = make_checkpoint(tmp_path / "k3.pt", num_classes=6, sub_centers=3)
    common = ["--threshold-deg", "80", "--device", "cpu", "--workers", "0", "--quiet"]
    assert main(["clean", str(checkpoint), str(noisy_list), "--out", str(tmp_path / "from_list"), "--rec", *common]) == 0
    listed = [line.rsplit(" ", 1) for line in (tmp_path / "from_list" / "train.txt").read_text().splitlines()]
    expected = {Path(path).read_bytes(): int(label) for path, label in listed}
    assert 0 < len(expected) < 24, "the threshold must split this set for the test to mean something"
    assert _records_by_image(tmp_path / "from_list" / "train.rec") == expected  # --rec: the same samples, bytes unchanged
    # The noisy set packed as a .rec (sorted by label, so in another order than the list) cleans the same way.
    noisy = [line.rsplit(" ", 1) for line in noisy_list.read_text().splitlines()]
    rec = tmp_path / "noisy_rec" / "train.rec"
    write_face_records(rec, [((noisy_list.parent / path).read_bytes(), int(label)) for path, label in noisy])
    assert main(["clean", str(checkpoint), str(rec), "--out", str(tmp_path / "from_rec"), *common]) == 0
    assert _records_by_image(tmp_path / "from_rec" / "train.rec") == expected
    assert not (tmp_path / "from_rec" / "train.txt").exists()
    report = json.loads((tmp_path / "from_rec" / "report.json").read_text())
    assert report["kept"] == len(expected) and report["outputs"] == ["train.rec"] and "ground_truth" not in report
    dropped = (tmp_path / "from_rec" / "dropped.tsv").read_text().splitlines()
    assert dropped[0].startswith("record_key\t") and len(dropped) - 1 == 24 - len(expected)
    with pytest.raises(DataError, match="ground truth"):
        clean_dataset(checkpoint, rec, tmp_path / "x", truth=tmp_path / "noisy" / "truth.tsv", workers=0, progress=False)
    with pytest.raises(DataError, match="output folder"):
        clean_dataset(checkpoint, rec, rec.parent, workers=0, progress=False)
    assert not (tmp_path / "x").exists()
