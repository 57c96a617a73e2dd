"""Training datasets: decoding, normalization, flips, labels, bad samples, workers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from arcface.data import DataError
from arcface.data.datasets import (
    FaceTransform,
    ImageFolderDataset,
    ListDataset,
    SyntheticDataset,
    build_dataset,
    decode_image,
)


def _png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


@pytest.fixture
def folder(tmp_path):
    """root/<identity>/<image>: 3 identities, lossless PNGs whose pixels encode (identity, index)."""
    root = tmp_path / "faces"
    for identity, name in enumerate(["carol", "alice", "bob"]):
        (root / name).mkdir(parents=True)
        for index in range(identity + 2):
            image = np.full((112, 112, 3), 10 * identity + index, dtype=np.uint8)
            image[:, :56, 0] = 200  # left half red: shows flips
            (root / name / f"{index:03d}.png").write_bytes(_png(image))
    (root / "alice" / "README.txt").write_text("not an image")
    return root


def test_transform_normalizes_to_minus_one_one_and_flips():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :3] = 255
    plain = FaceTransform(flip=0.0)(image)
    assert plain.shape == (3, 4, 6) and plain.dtype == torch.float32
    assert plain[:, :, :3].eq(1.0).all() and plain[:, :, 3:].eq(-1.0).all()
    flipped = FaceTransform(flip=1.0)(image)
    torch.testing.assert_close(flipped, plain.flip(-1))


def test_decode_gives_rgb_and_names_the_source_of_bad_bytes():
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    np.testing.assert_array_equal(decode_image(_png(rgb), "x"), rgb)
    with pytest.raises(DataError, match="some/file.jpg: cannot decode"):
        decode_image(b"\xff\xd8\xff\xe0 truncated", "some/file.jpg")
    with pytest.raises(DataError, match="empty.jpg"):
        decode_image(b"", "empty.jpg")


def test_image_folder_labels_are_sorted_identities(folder):
    dataset = ImageFolderDataset(folder, transform=FaceTransform(flip=0.0))
    assert dataset.identities == ["alice", "bob", "carol"]
    assert len(dataset) == 3 + 4 + 2 and dataset.num_classes == 3
    assert dataset.labels == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    image, label = dataset[3]  # bob's first image: identity 2 in the fixture, index 0
    assert label == 1 and image.shape == (3, 112, 112)
    assert image[1, 0, 0].item() == pytest.approx(20 / 127.5 - 1.0)
    assert image[0, 0, 0].item() == pytest.approx(200 / 127.5 - 1.0)  # red on the left: not flipped


def test_image_folder_bad_inputs(folder, tmp_path):
    (folder / "dave").mkdir()
    with pytest.raises(DataError, match="dave: identity folder has no images"):
        ImageFolderDataset(folder)
    with pytest.raises(DataError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "missing")


def test_corrupt_image_is_named_or_skipped_and_counted(folder, caplog):
    (folder / "bob" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = ImageFolderDataset(folder)
    with pytest.raises(DataError, match=r"bob/001.png: cannot decode"):
        dataset[4]
    skipping = ImageFolderDataset(folder, skip_bad=True)
    image, label = skipping[4]
    assert label == 1 and skipping.skipped == 1
    assert "skipping bad sample" in caplog.text and "bob/001.png" in caplog.text


def test_list_dataset(folder, tmp_path):
    listing = tmp_path / "clean.txt"
    listing.write_text(f"# cleaned subset\n{folder}/bob/000.png 0\n\n{folder}/carol/001.png 1\n")
    dataset = ListDataset(listing)
    assert len(dataset) == 2 and dataset.labels == [0, 1]
    assert dataset[1][0].shape == (3, 112, 112)
    listing.write_text("a.png 0\nb.png minus-one\n")
    with pytest.raises(DataError, match=r"clean.txt:2: expected 'path label'"):
        ListDataset(listing)
    listing.write_text("missing.png 0\n")
    with pytest.raises(DataError, match="missing.png: cannot read"):
        ListDataset(listing)[0]


def test_synthetic_dataset_is_deterministic_per_index():
    dataset = SyntheticDataset(num_samples=10, num_classes=4, seed=1)
    first, label = dataset[5]
    torch.testing.assert_close(first, dataset[5][0])
    assert label == 1 and first.shape == (3, 112, 112)
    assert first.min() >= -1 and first.max() <= 1
    assert not torch.equal(first, dataset[6][0])


def test_dataloader_with_two_workers_reads_the_same_samples(folder):
    dataset = ImageFolderDataset(folder, transform=FaceTransform(flip=0.0))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=False)
    images, labels = zip(*loader)
    torch.testing.assert_close(torch.cat(images), torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert torch.cat(labels).tolist() == dataset.labels


def test_build_dataset_dispatches_on_the_path(folder, tmp_path):
    assert isinstance(build_dataset(folder), ImageFolderDataset)
    assert len(build_dataset("synthetic:12:3")) == 12
    with pytest.raises(DataError, match="synthetic:NUM_SAMPLES:NUM_CLASSES"):
        build_dataset("synthetic:x")
    with pytest.raises(DataError, match="not found"):
        build_dataset(tmp_path / "nothing.bin")


def test_record_dataset_on_a_real_im2rec_file():
    from arcface.data.datasets import RecordDataset
    from conftest import shared_path

    dataset = RecordDataset(shared_path("fixtures/recordio/faceid_processing_testing/testing.rec"), transform=FaceTransform(flip=0.0))
    assert len(dataset) == 217 and dataset.num_classes == 25
    image, label = dataset[0]
    assert image.shape == (3, 112, 112) and 0 <= label < 25
    assert isinstance(build_dataset(dataset.records.rec_path), RecordDataset)
