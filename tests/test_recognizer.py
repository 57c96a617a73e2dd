"""FaceRecognizer / Gallery and the embed, verify, search, gallery build commands."""

import json

import cv2
import numpy as np
import pytest
import torch

from arcface import FaceRecognizer, Gallery
from arcface.cli import main
from arcface.data.errors import DataError
from arcface.eval import load_face_model
from conftest import shared_path
from test_eval_cli import SIZE, linear_onnx


@pytest.fixture()
def setup(tmp_path, onnx_runtime):
    """An ONNX face model and 3 people x 3 photos (skips without onnx / onnxruntime)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3 * SIZE * SIZE, 8)) / 100
    model = linear_onnx(tmp_path / "m.onnx", weight, [3, SIZE, SIZE])
    people = {}
    for name in ("ann", "bob", "cid"):
        base = rng.integers(0, 256, (SIZE, SIZE, 3))
        for k in range(3):
            path = tmp_path / "people" / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
        people[name] = base
    return model, tmp_path / "people"


def direct_score(model_path, a, b):
    model, _ = load_face_model(model_path)
    def embed(path):
        x = torch.from_numpy(cv2.imread(str(path))[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
        with torch.no_grad():
            e = (model(x) + model(x.flip(3)))[0].double()
        return e / e.norm()
    return float(embed(a) @ embed(b))


def test_verify_prints_the_score_and_the_decision(setup, capsys):
    model, people = setup
    a, b, c = people / "ann" / "0.png", people / "ann" / "1.png", people / "bob" / "0.png"
    assert main(["verify", str(a), str(b), "--model", str(model), "--threshold", "0.5", "--device", "cpu"]) == 0
    score, word = capsys.readouterr().out.split()[:2]
    assert float(score) == pytest.approx(direct_score(model, a, b), abs=1e-4) and word == "same"
    assert main(["verify", str(a), str(c), "--model", str(model), "--threshold", "0.5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.split()[1] == "different"
    # The threshold of a report saved beside the model (arcface eval --out MODEL.json) is the default.
    model.with_suffix(".json").write_text(json.dumps({"metric": "cosine", "threshold": 0.99}))
    assert FaceRecognizer.load(model).threshold == 0.99


def test_embed_keeps_going_past_a_bad_photo(setup, tmp_path):
    model, people = setup
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    photos = [str(people / "ann" / "0.png"), str(tmp_path / "broken.jpg"), str(people / "bob" / "2.png")]
    assert main(["embed", *photos, "--model", str(model), "--out", str(tmp_path / "e.npy"), "--device", "cpu"]) == 1
    embeddings = np.load(tmp_path / "e.npy")
    status = json.loads((tmp_path / "e.json").read_text())["status"]
    assert np.isnan(embeddings[1]).all() and np.isfinite(embeddings[[0, 2]]).all()
    assert status[photos[0]] == "ok" and status[photos[1]].startswith("unreadable")
    np.testing.assert_allclose(np.linalg.norm(embeddings[[0, 2]], axis=1), 1, atol=1e-5)


def test_gallery_search_finds_the_person(setup, tmp_path, capsys):
    model, people = setup
    assert main(["gallery", "build", str(people), "--model", str(model), "--out", str(tmp_path / "g.npz"), "--device", "cpu"]) == 0
    gallery = Gallery.load(tmp_path / "g.npz")
    assert sorted(set(gallery.names)) == ["ann", "bob", "cid"] and len(gallery.names) == 9
    assert main(["search", str(people / "cid" / "1.png"), "--gallery", str(tmp_path / "g.npz"), "--model", str(model), "-k", "2", "--device", "cpu"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert lines[0][:2] == ["answer", "cid"] and [line[1] for line in lines[1:]][0] == "cid" and len(lines) == 1 + 2
    scores = gallery.embeddings @ gallery.embeddings[gallery.names.index("bob")]
    best = gallery.search(gallery.embeddings[[gallery.names.index("bob")]], k=3)[0]
    assert best[0] == ("bob", pytest.approx(float(scores.max()), abs=1e-6))
    assert [name for name, _ in best] == sorted(set(gallery.names), key=lambda n: -max(s for g, s in zip(gallery.names, scores) if g == n))


def test_unaligned_photo_without_a_detector_is_a_clear_error(setup, tmp_path, caplog):
    model, _ = setup
    cv2.imwrite(str(tmp_path / "big.jpg"), np.zeros((200, 150, 3), np.uint8))
    with pytest.raises(DataError, match="detector"):
        FaceRecognizer.load(model).embed([str(tmp_path / "big.jpg")])
    assert main(["verify", str(tmp_path / "big.jpg"), str(tmp_path / "big.jpg"), "--model", str(model), "--device", "cpu"]) == 2
    assert "pass --detector PATH" in caplog.text and "pass --aligned" in caplog.text and "=True" not in caplog.text  # flags, not Python
    assert main(["search", str(tmp_path / "big.jpg"), "--gallery", str(tmp_path / "none.npz"), "--model", str(model)]) == 2
    assert "gallery file not found" in caplog.text


@pytest.mark.usefixtures("onnx_runtime")
def test_real_photos_with_the_independent_model():
    lfw = shared_path("data/lfw_deepfunneled/images")
    recognizer = FaceRecognizer.from_onnx(shared_path("data/models/mobilefacenet_onnx/mobilefacenet.onnx"), input_std=128.0,
                                          detector=shared_path("data/models/yunet/face_detection_yunet_2026may.onnx"))
    same = recognizer.verify(lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg", lfw / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg")
    other = recognizer.verify(lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg", lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg")
    assert same[1] and not other[1] and same[0] > other[0] + 0.3


@pytest.mark.usefixtures("onnx_runtime")
def test_a_photo_embeds_alike_by_path_as_pil_and_as_an_opencv_array_with_its_order_declared():
    from PIL import Image

    lfw = shared_path("data/lfw_deepfunneled/images")
    recognizer = FaceRecognizer.from_onnx(shared_path("data/models/mobilefacenet_onnx/mobilefacenet.onnx"), input_std=128.0,
                                          detector=shared_path("data/models/yunet/face_detection_yunet_2026may.onnx"))
    photo = lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    by_path = recognizer.embed([photo]).embeddings[0]
    as_pil = recognizer.embed([Image.open(photo)]).embeddings[0]
    as_bgr = recognizer.embed([cv2.imread(str(photo))], bgr=True).embeddings[0]
    as_rgb = recognizer.embed([cv2.imread(str(photo))[..., ::-1]]).embeddings[0]
    for other in (as_pil, as_bgr, as_rgb):
        assert float(by_path @ other) > 0.9999
    # An OpenCV array passed without its order declared is read as RGB: red and blue swapped, another face.
    swapped = recognizer.embed([cv2.imread(str(photo))]).embeddings[0]
    assert float(by_path @ swapped) < 0.99
    assert recognizer.verify(cv2.imread(str(photo)), photo, bgr=True)[0] > 0.9999


@pytest.mark.parametrize("use_faiss", [False, True], ids=["numpy", "faiss"])
def test_gallery_search_matches_a_brute_force_reference(use_faiss):
    if use_faiss:
        pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((300, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    names = [f"id{int(i)}" for i in rng.integers(0, 40, 300)]  # several entries per identity
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = Gallery(names, embeddings)
    for k in (1, 5, 40):
        ours = gallery.search(queries, k=k, use_faiss=use_faiss)
        for query, found in zip(queries, ours):
            best = {}
            for name, embedding in zip(names, embeddings):  # literal: each identity's best entry
                best[name] = max(best.get(name, -2.0), float(query @ embedding))
            expected = sorted(best.items(), key=lambda item: -item[1])[:k]
            assert [n for n, _ in found] == [n for n, _ in expected]
            np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)


@pytest.mark.usefixtures("onnx_runtime")
def test_detect_finds_both_faces_of_two_photos_side_by_side(tmp_path):
    lfw = shared_path("data/lfw_deepfunneled/images")
    recognizer = FaceRecognizer.from_onnx(shared_path("data/models/mobilefacenet_onnx/mobilefacenet.onnx"), input_std=128.0,
                                          detector=shared_path("data/models/yunet/face_detection_yunet_2026may.onnx"))
    left, right = lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg", lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg"
    pair = np.concatenate([cv2.imread(str(left)), cv2.imread(str(right))], axis=1)  # 250 x 500
    cv2.imwrite(str(tmp_path / "pair.png"), pair)
    faces = recognizer.detect(tmp_path / "pair.png")
    assert len(faces) == 2
    faces.sort(key=lambda face: face.box[0])
    for face, (x0, x1) in zip(faces, ((0, 250), (250, 500))):
        x, y, w, h = face.box
        assert x0 <= x and x + w <= x1 and 50 <= w <= 200 and 50 <= h <= 220  # inside its own half, a face's size
        center = face.landmarks.mean(axis=0)
        assert x0 < center[0] < x1 and 0.5 < face.score <= 1 and face.crop.shape == (112, 112, 3)
        np.testing.assert_allclose(np.linalg.norm(face.embedding), 1, atol=1e-5)
    # Each face's embedding is its own photo's (up to the detector's landmarks moving slightly with the canvas).
    alone = recognizer.embed([str(left), str(right)]).embeddings
    similarity = np.stack([face.embedding for face in faces]) @ alone.T
    assert similarity[0, 0] > 0.9 and similarity[1, 1] > 0.9 and similarity[0, 1] < 0.5 and similarity[1, 0] < 0.5
    result = recognizer.embed([str(tmp_path / "pair.png"), str(left)], all_faces=True)
    assert result.status == ["ok_several_faces", "ok"] and [len(f) for f in result.faces] == [2, 1]
    np.testing.assert_allclose(result.faces[1][0].embedding, alone[0], atol=1e-5)
