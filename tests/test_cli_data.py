"""``arcface data pack | unpack | align`` through ``main(argv)``: results, and one-line errors for bad input."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface.cli import main
from arcface.data import read_bin, read_pairs, write_bin
from conftest import shared_path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for identity in ["alice", "bob"]:
        (root / identity).mkdir(parents=True)
        for index in range(3):
            ok, data = cv2.imencode(".jpg", rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
            (root / identity / f"{index}.jpg").write_bytes(data.tobytes())
    return root


def test_pack_then_unpack_round_trips_bytes_and_labels(folder, tmp_path, capsys):
    record = tmp_path / "out" / "train.rec"
    record.parent.mkdir()
    assert main(["data", "pack", str(folder), str(record)]) == 0
    assert (tmp_path / "out" / "train.idx").exists()
    assert (tmp_path / "out" / "property").read_text().strip() == "2,112,112"
    assert main(["data", "unpack", str(record), str(tmp_path / "unpacked")]) == 0
    for label, identity in enumerate(["alice", "bob"]):
        original = sorted((folder / identity).iterdir())
        restored = sorted((tmp_path / "unpacked" / str(label)).iterdir(), key=lambda p: int(p.stem))
        assert [p.read_bytes() for p in restored] == [p.read_bytes() for p in original]


def test_unpack_bin_writes_images_and_pairs(tmp_path):
    source = shared_path("fixtures/bin/small_lfw.bin")
    assert main(["data", "unpack", str(source), str(tmp_path / "lfw")]) == 0
    pairs = read_pairs(tmp_path / "lfw" / "pairs.tsv")
    original = read_bin(source)
    assert len(pairs) == original.num_pairs and all(p.same for p in pairs)
    assert (tmp_path / "lfw" / pairs[0].left).read_bytes() == original.images[0]
    # and back: a .bin written from the unpacked pairs holds the same images
    write_bin(tmp_path / "again.bin", [(tmp_path / "lfw" / p).read_bytes() for pair in pairs for p in (pair.left, pair.right)], [p.same for p in pairs])
    assert read_bin(tmp_path / "again.bin").images == original.images


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.rec", b"\x00" * 64, "bad magic"),
        ("crafted.bin", pickle.dumps(_Exploit()), "os.system|posix.system"),
        ("notes.txt", b"hello", "cannot unpack this file type"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line(tmp_path, name, content, message, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / name
    source.write_bytes(content)
    assert main(["data", "unpack", str(source), str(tmp_path / "out")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and name in errors[0]
    assert any(part in errors[0] for part in message.split("|"))
    assert not (tmp_path / "PWNED").exists()


def test_missing_inputs_exit_nonzero(tmp_path, folder):
    assert main(["data", "unpack", str(tmp_path / "missing.rec"), str(tmp_path / "out")]) == 2
    assert main(["data", "pack", str(tmp_path / "nowhere"), str(tmp_path / "x.rec")]) == 2
    assert main(["data", "pack", str(folder), str(tmp_path / "x.zip")]) == 2
    assert main(["data", "align", str(folder), str(tmp_path / "aligned")]) == 2  # no --detector


def test_no_traceback_from_a_real_process(tmp_path):
    source = tmp_path / "truncated.rec"
    source.write_bytes(b"\x0a\xd7\x23\xce\xff\xff\x00\x00")
    result = subprocess.run(
        [sys.executable, "-m", "arcface.cli", "data", "unpack", str(source), str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "truncated.rec" in result.stderr


def test_align_into_a_rec_holds_each_aligned_face_with_its_label(tmp_path):
    from arcface.data.align import FaceAligner
    from arcface.data.datasets import FaceTransform, RecordDataset, decode_image

    detector = shared_path("data/models/yunet/face_detection_yunet_2026may.onnx")
    lfw = shared_path("data/lfw_deepfunneled/images")
    photos = {"Aaron_Peirsol": ["Aaron_Peirsol_0001.jpg", "Aaron_Peirsol_0002.jpg"], "Abdullah": ["Abdullah_0001.jpg"]}
    for person, names in photos.items():
        (tmp_path / "photos" / person).mkdir(parents=True)
        for name in names:
            (tmp_path / "photos" / person / name).write_bytes((lfw / person / name).read_bytes())
    record = tmp_path / "aligned.rec"
    assert main(["data", "align", str(tmp_path / "photos"), str(record), "--detector", str(detector), "--workers", "1"]) == 0
    report = json.loads((tmp_path / "aligned_aligned" / "align_report.json").read_text())
    assert report["faces_found"] == 3
    assert (tmp_path / "property").read_text().strip() == "2,112,112"

    # Read back: one record per photo, identities labelled in name order, each the face a direct
    # alignment of that photo gives (RGB; the difference is JPEG's rounding).
    dataset = RecordDataset(record, transform=FaceTransform(flip=0.0))
    assert len(dataset) == 3 and dataset.num_classes == 2 and dataset.labels == [0, 0, 1]
    aligner = FaceAligner(detector)
    expected = [(label, lfw / person / name) for label, (person, names) in enumerate(sorted(photos.items())) for name in names]
    for index, (label, photo) in enumerate(expected):
        stored = decode_image(dataset.encoded(index), f"record {index}")
        direct = aligner.align(cv2.imread(str(photo)))[0].image[..., ::-1]  # BGR -> RGB
        assert stored.shape == (112, 112, 3) and dataset[index][1] == label
        assert np.abs(stored.astype(np.int16) - direct.astype(np.int16)).mean() < 3, photo.name
        others = [p for _, p in expected if p != photo]
        assert all(np.abs(stored.astype(np.int16) - aligner.align(cv2.imread(str(p)))[0].image[..., ::-1].astype(np.int16)).mean() > 10
                   for p in others), photo.name  # and not another photo's face
