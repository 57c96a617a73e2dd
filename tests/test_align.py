"""Face alignment: the similarity fit against known transforms, and YuNet + warp on real LFW photos."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from arcface.data import DataError
from arcface.data.align import (
    ARCFACE_TEMPLATE,
    Detection,
    FaceAligner,
    FaceDetector,
    center_crop_face,
    choose_face,
    umeyama_similarity,
    warp_face,
)
from arcface.data.align_job import JOURNAL_NAME, AlignOptions, align_folder
from conftest import shared_path

YUNET = "data/models/yunet/face_detection_yunet_2026may.onnx"


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


@pytest.mark.parametrize("angle, scale, shift", [(0.0, 1.0, (0, 0)), (0.3, 2.5, (10, -4)), (-1.2, 0.4, (100, 50))])
def test_umeyama_recovers_a_known_similarity(angle, scale, shift):
    truth = _similarity(angle, scale, shift)
    source = np.random.default_rng(0).uniform(0, 200, size=(5, 2))
    target = source @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(umeyama_similarity(source, target), truth, atol=1e-9)


def test_umeyama_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 100, size=(5, 2))
    mirrored = source * np.array([-1.0, 1.0])  # a reflection is not a similarity: best fit has det > 0
    matrix = umeyama_similarity(source, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0
    noisy = source @ _similarity(0.2, 1.5, (3, 3))[:, :2].T + rng.normal(0, 0.5, size=(5, 2))
    best = umeyama_similarity(source, noisy)
    residual = np.square(source @ best[:, :2].T + best[:, 2] - noisy).sum()
    for delta in (1e-3, -1e-3):  # any perturbed transform fits worse
        worse = best + delta
        assert np.square(source @ worse[:, :2].T + worse[:, 2] - noisy).sum() > residual


def test_warp_with_template_landmarks_is_the_identity():
    image = np.random.default_rng(2).integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_face(image, ARCFACE_TEMPLATE), image)


def test_choose_face_prefers_the_center():
    landmarks = np.zeros((5, 2))
    edge = Detection(np.array([0.0, 0.0, 50.0, 50.0]), landmarks, 0.99)
    center = Detection(np.array([80.0, 80.0, 40.0, 40.0]), landmarks, 0.7)
    assert choose_face([edge, center], (200, 200, 3)) is center
    large = Detection(np.array([100.0, 100.0, 90.0, 90.0]), landmarks, 0.8)
    assert choose_face([edge, center, large], (200, 200, 3), "score") is edge
    assert choose_face([edge, center, large], (200, 200, 3), "largest") is large
    with pytest.raises(ValueError, match="face choice"):
        choose_face([edge], (200, 200, 3), "biggest")


def test_center_crop_fallback_shape():
    image = np.zeros((250, 300, 3), dtype=np.uint8)
    image[100:150, 125:175] = 255  # the central 50x50
    crop = center_crop_face(image, fraction=0.2)
    assert crop.shape == (112, 112, 3) and crop.min() == 255


def test_bad_detector_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="face detector model not found"):
        FaceDetector(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match="cannot load"):
        FaceDetector(junk)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(shared_path(YUNET))


def _lfw(name: str):
    return shared_path(f"data/lfw_deepfunneled/images/{name.rsplit('_', 1)[0]}/{name}.jpg")


@pytest.mark.parametrize("name", ["Aaron_Eckhart_0001", "Angelina_Jolie_0001", "George_W_Bush_0010"])
def test_aligned_face_has_its_landmarks_on_the_template(detector, name):
    """Property: detecting again on the aligned crop finds the landmarks where the template puts them."""
    image = cv2.imread(str(_lfw(name)))
    faces = FaceAligner(detector).align(image)
    assert len(faces) == 1 and faces[0].image.shape == (112, 112, 3)
    again = detector.detect(cv2.copyMakeBorder(faces[0].image, 56, 56, 56, 56, cv2.BORDER_CONSTANT))
    assert again, "no face found in the aligned crop"
    landmarks = choose_face(again, (224, 224, 3)).landmarks - 56
    error = np.linalg.norm(landmarks - ARCFACE_TEMPLATE, axis=1)  # pixels, per landmark
    # Five points cannot all fit a 4-parameter similarity exactly (expressions move the mouth), and
    # the detector is re-run on a small crop (a few pixels of noise): mean error under 4.5 px.
    assert error.mean() < 4.5 and error.max() < 8.0, error
    slipped = np.linalg.norm(landmarks + 6.0 - ARCFACE_TEMPLATE, axis=1)
    assert slipped.mean() > 4.5  # the bound catches a 6-pixel (5%) misplacement


def test_align_folder_report_resume_and_policies(tmp_path, detector):
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "b").mkdir()
    for name in ["Aaron_Eckhart_0001", "Angelina_Jolie_0001"]:
        (source / "a" / f"{name}.jpg").write_bytes(_lfw(name).read_bytes())
    (source / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cv2.imwrite(str(source / "b" / "blank.png"), np.full((200, 200, 3), 127, np.uint8))
    (source / "b" / "notes.txt").write_text("not an image")
    options = AlignOptions(detector=str(detector.model_path), workers=1)
    destination = tmp_path / "dst"
    report = align_folder(source, destination, options)
    assert report["images"] == 4 and report["faces_found"] == 2
    assert report["counts"] == {"no_face": 1, "ok": 2, "unreadable": 1}
    assert report["unreadable"] == ["b/broken.jpg"] and report["no_face"] == ["b/blank.png"]
    assert sorted(p.name for p in (destination / "a").iterdir()) == ["Aaron_Eckhart_0001.jpg", "Angelina_Jolie_0001.jpg"]
    assert cv2.imread(str(destination / "a" / "Aaron_Eckhart_0001.jpg")).shape == (112, 112, 3)
    assert json.loads((destination / "align_report.json").read_text())["faces_found"] == 2

    # A crash mid-line leaves a cut journal line: that image is redone, the others are skipped.
    journal = destination / JOURNAL_NAME
    journal.write_text(journal.read_text() + '{"path": "b/bla')
    again = align_folder(source, destination, options)
    assert again["processed_this_run"] == 0 and again["counts"] == report["counts"]

    fallback = align_folder(source, tmp_path / "dst2", AlignOptions(detector=str(detector.model_path), workers=1, no_face="center-crop"))
    assert fallback["fallback"] == ["b/blank.png"]
    assert (tmp_path / "dst2" / "b" / "blank.jpg").exists()


def test_align_folder_bad_inputs(tmp_path, detector):
    with pytest.raises(DataError, match="source folder not found"):
        align_folder(tmp_path / "nope", tmp_path / "out", AlignOptions(detector=str(detector.model_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        align_folder(tmp_path / "empty", tmp_path / "out", AlignOptions(detector=str(detector.model_path)))
    with pytest.raises(ValueError, match="no_face"):
        align_folder(tmp_path / "empty", tmp_path / "out", AlignOptions(detector=str(detector.model_path), no_face="guess"))
