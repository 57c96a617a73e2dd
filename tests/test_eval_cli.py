"""`arcface eval`: model loading (ONNX, checkpoints), images, cache, reports, and bad input.

Tests that build or run ONNX models ask for the ``onnx_runtime`` fixture: without onnx / onnxruntime
they skip, the others still run."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from arcface.backbones import create_backbone
from arcface.cli import main
from arcface.data.align import ARCFACE_TEMPLATE
from arcface.data.errors import DataError
from arcface.eval import identify, ijb_verification, kfold_accuracy, read_ijb_meta, tar_at_far
from arcface.eval.images import FaceImages, Prep, center_crop
from arcface.input_spec import InputSpec
from arcface.model import OnnxFaceModel, append_onnx_metadata, load_face_model, read_onnx_metadata
from arcface.train.config import TrainConfig, config_to_dict

needs_onnx = pytest.mark.usefixtures("onnx_runtime")

SIZE = 112
DIM = 8


def linear_onnx(path: Path, weight: np.ndarray, shape: list, batch=None) -> Path:
    """A face 'model': flatten the input (whatever its layout) and multiply by ``weight``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "weight"], ["embeddings"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch or "batch", *shape])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [batch or "batch", weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np.float32), "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def reference_embedding(pixels_rgb: np.ndarray, weight, mean, std, layout, bgr) -> np.ndarray:
    """What the linear model gives for (N, H, W, 3) uint8 RGB faces under its input convention."""
    x = (pixels_rgb.astype(np.float64) - mean) / std
    if bgr:
        x = x[..., ::-1]
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return x.reshape(len(x), -1) @ weight


@pytest.fixture(scope="module")
def weight():
    return np.random.default_rng(0).standard_normal((3 * SIZE * SIZE, DIM)) / 100


@needs_onnx
@pytest.mark.parametrize("layout, bgr, mean, std, batch", [("nchw", False, 127.5, 128.0, None), ("nhwc", True, 127.5, 127.5, None), ("nchw", False, 0.0, 255.0, 2)])
def test_onnx_wrapper_feeds_the_models_input_convention(tmp_path, weight, layout, bgr, mean, std, batch):
    shape = [3, SIZE, SIZE] if layout == "nchw" else [SIZE, SIZE, 3]
    path = linear_onnx(tmp_path / "m.onnx", weight, shape, batch)
    model = OnnxFaceModel(path, InputSpec(mean=mean, std=std, channel_order="BGR" if bgr else "RGB"))
    assert model.input_layout == layout and model.fixed_batch == batch
    pixels = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    ours = model(model.spec.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours, reference_embedding(pixels, weight, mean, std, layout, bgr), rtol=1e-4, atol=1e-4)


@needs_onnx
def test_an_onnx_file_says_how_to_feed_it_and_flags_override(tmp_path, weight, caplog):
    path = linear_onnx(tmp_path / "m.onnx", weight, [SIZE, SIZE, 3])
    written = InputSpec(mean=100.0, std=50.0, channel_order="BGR", layout="NHWC")
    append_onnx_metadata(path, {**written.to_metadata(), "arcface.note": "x"})
    metadata = read_onnx_metadata(path)
    assert metadata["arcface.note"] == "x" and InputSpec.from_metadata(metadata) == written
    pixels = np.random.default_rng(2).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    model, info = load_face_model(path)
    assert info.spec == written
    ours = model(info.spec.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours, reference_embedding(pixels, weight, 100.0, 50.0, "nhwc", True), rtol=1e-4, atol=1e-4)
    with caplog.at_level("WARNING"):
        _, overridden = load_face_model(path, input_std=128.0, bgr=False)
    assert (overridden.input_std, overridden.bgr, overridden.input_mean) == (128.0, False, 100.0)
    assert "input std 50.0; using 128.0" in caplog.text


@needs_onnx
def test_onnx_model_of_another_input_size_is_refused(tmp_path, weight):
    path = linear_onnx(tmp_path / "m128.onnx", np.zeros((3 * 128 * 128, DIM)), [3, 128, 128])
    with pytest.raises(DataError, match="112x112"):
        load_face_model(path)
    assert main(["eval", str(path), "--bin", str(tmp_path / "x.bin")]) == 2


def test_pytorch_models_reject_onnx_input_options_and_checkpoints_round_trip(tmp_path):
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 32
    torch.manual_seed(0)
    backbone = create_backbone("mobilefacenet", embedding_size=32).eval()
    torch.save({"config": config_to_dict(config), "step": 7, "backbone": backbone.state_dict()}, tmp_path / "step.pt")
    model, info = load_face_model(tmp_path / "step.pt")
    assert info.kind == "checkpoint" and info.embedding_size == 32
    images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone(images))
    with pytest.raises(ValueError, match="ONNX"):
        load_face_model(tmp_path / "step.pt", input_std=128.0)
    torch.save(backbone.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(DataError, match="--arch"):
        load_face_model(tmp_path / "plain.pth")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_face_model(tmp_path / "broken.pt")


# ---------------------------------------------------------------------------- a tiny pairs set


def _face(rng, base=None):
    """A 112x112 'face': a person's base pattern plus a little noise."""
    base = rng.integers(0, 256, (SIZE, SIZE, 3)) if base is None else base
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8), base


@pytest.fixture()
def pair_set(tmp_path):
    """LFW-layout folder: 12 people x 2 images; pairs.txt with 2 folds of 3 same + 3 different."""
    rng = np.random.default_rng(3)
    root = tmp_path / "images"
    people = [f"Person_{i:02d}" for i in range(12)]
    for name in people:
        base = None
        for number in (1, 2):
            image, base = _face(rng, base)
            (root / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name / f"{name}_{number:04d}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    lines = ["2\t3"]
    for fold in range(2):
        group = people[fold * 6 : fold * 6 + 6]
        lines += [f"{name}\t1\t2" for name in group[:3]]
        lines += [f"{group[i]}\t1\t{group[i + 3]}\t2" for i in range(3)]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return pairs, root


def _run_eval(args) -> tuple[int, dict | None]:
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    status = main(["eval", *args, "--quiet", "--workers", "0"])
    return status, (json.loads(out.read_text()) if out is not None and out.exists() else None)


@needs_onnx
def test_pairs_report_matches_a_direct_computation_and_the_cache_is_used(tmp_path, weight, pair_set):
    pairs, root = pair_set
    model_path = linear_onnx(tmp_path / "m.onnx", weight, [3, SIZE, SIZE])
    args = [str(model_path), "--pairs", str(pairs), "--images", str(root), "--input-std", "128", "--cache", str(tmp_path / "cache")]
    status, report = _run_eval([*args, "--out", str(tmp_path / "r.json"), "--roc", str(tmp_path / "roc.png")])
    assert status == 0
    # The same numbers from first principles: decode, flip-test with the reference model, cosine, file folds.
    lines = pairs.read_text().split("\n")[1:13]
    def path(name, number):
        return root / name / f"{name}_{int(number):04d}.jpg"
    pixels = lambda p: cv2.imread(str(p))[..., ::-1][None]  # noqa: E731
    def embed(p):
        image = pixels(p)
        return reference_embedding(image, weight, 127.5, 128.0, "nchw", False) + reference_embedding(image[:, :, ::-1], weight, 127.5, 128.0, "nchw", False)
    scores, same, folds = [], [], []
    for i, line in enumerate(lines):
        fields = line.split("\t")
        a, b = (path(fields[0], fields[1]), path(fields[0], fields[2])) if len(fields) == 3 else (path(fields[0], fields[1]), path(fields[2], fields[3]))
        ea, eb = embed(a)[0], embed(b)[0]
        scores.append(ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb))
        same.append(len(fields) == 3)
        folds.append(i // 6)
    expected = kfold_accuracy(scores, same, folds)
    assert report["accuracy"] == pytest.approx(expected.accuracy_mean)
    assert report["accuracy_std"] == pytest.approx(expected.accuracy_std)
    assert report["best_threshold_accuracy"] == pytest.approx(expected.best_threshold_accuracy)
    assert report["threshold"] == pytest.approx(expected.threshold, abs=1e-5)
    assert report["tar_at_far"]["1e-1"] == pytest.approx(tar_at_far(scores, same, [0.1])[0.1])
    assert report["folds_from"] == "the file" and report["num_folds"] == 2 and report["num_images"] == 18
    assert report["alignment"] == {"pre_aligned": 18} and report["embedding"]["embedded"] == 18
    assert report["model"]["input_std"] == 128.0 and (tmp_path / "roc.png").stat().st_size > 1000
    # Again: every embedding from the cache, the same report numbers; a squared-L2 metric gives the same accuracy.
    status, again = _run_eval([*args, "--out", str(tmp_path / "r2.json"), "--metric", "l2"])
    assert status == 0 and again["embedding"] == {**again["embedding"], "embedded": 0, "from_cache": 18}
    assert again["accuracy"] == report["accuracy"]
    assert again["threshold"] == pytest.approx(2 - 2 * report["threshold"], abs=1e-5)
    # A damaged cache is ignored (warned), not fatal.
    Path(report["embedding"]["cache_file"]).write_bytes(b"garbage")
    status, third = _run_eval([*args, "--out", str(tmp_path / "r3.json")])
    assert status == 0 and third["embedding"]["embedded"] == 18 and third["accuracy"] == report["accuracy"]


@needs_onnx
def test_bad_inputs_give_one_line_errors(tmp_path, weight, pair_set, caplog):
    pairs, root = pair_set
    model_path = str(linear_onnx(tmp_path / "m.onnx", weight, [3, SIZE, SIZE]))
    common = ["--images", str(root), "--no-cache"]

    def fails(args, message):
        caplog.clear()
        assert main(["eval", *args, "--quiet", "--workers", "0"]) == 2
        assert message in caplog.text, caplog.text

    fails([model_path, "--pairs", str(pairs), "--no-cache"], "--pairs needs --images")
    fails([model_path], "exactly one protocol")
    fails([model_path, "--pairs", str(pairs), "--bin", "x.bin", *common], "exactly one protocol")
    fails([str(tmp_path / "none.onnx"), "--pairs", str(pairs), *common], "model file not found")
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text(pairs.read_text().replace("Person_00\t1\t2", "Person_00\t1"))
    fails([model_path, "--pairs", str(bad), *common], "line 2")
    (root / "Person_01" / "Person_01_0002.jpg").unlink()
    fails([model_path, "--pairs", str(pairs), *common], "Person_01/Person_01_0002.jpg")
    (root / "Person_01" / "Person_01_0002.jpg").write_bytes(b"\xff\xd8 truncated")
    fails([model_path, "--pairs", str(pairs), *common], "cannot decode image")
    fails([model_path, "--pairs", str(pairs), *common, "--out", str(tmp_path)], "is a folder")


def test_unaligned_images_need_a_detector_or_another_mode(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "big.jpg"), rng.integers(0, 256, (250, 250, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="--detector"):
        FaceImages(["a/big.jpg"], tmp_path, align="auto")[0]
    image, prep = FaceImages(["a/big.jpg"], tmp_path, align="center", crop_size=140)[0]
    assert image.shape == (3, SIZE, SIZE) and prep == Prep.CENTER
    _, prep = FaceImages(["a/big.jpg"], tmp_path, align="none")[0]
    assert prep == Prep.RESIZED
    with pytest.raises(DataError, match="detector"):
        FaceImages(["a/big.jpg"], tmp_path, align="yunet")


def test_center_crop_takes_the_middle_square():
    image = np.zeros((250, 200, 3), np.uint8)
    image[125 - 50 : 125 + 50, 100 - 50 : 100 + 50] = 255  # a white 100x100 square in the middle
    crop = center_crop(image, 100)
    assert crop.shape == (SIZE, SIZE, 3) and crop[2:-2, 2:-2].min() == 255


# ---------------------------------------------------------------------------- IJB and 1:N plumbing


@needs_onnx
def test_ijb_and_identification_commands_report_what_the_library_computes(tmp_path, weight):
    rng = np.random.default_rng(5)
    model_path = str(linear_onnx(tmp_path / "m.onnx", weight, [3, SIZE, SIZE]))
    model, _ = load_face_model(model_path)
    # IJB layout: 3 subjects, 2 templates each (2 media, one with 2 frames), landmarks on the template.
    ijb = tmp_path / "ijb"
    (ijb / "loose_crop").mkdir(parents=True)
    (ijb / "meta").mkdir()
    faces, tid_mid, landmarks = {}, [], []
    for subject in range(3):
        base = None
        for template in range(2):
            for media, frames in ((0, 1), (1, 2)):
                for frame in range(frames):
                    name = f"{subject}_{template}_{media}_{frame}.jpg"
                    image, base = _face(rng, base)
                    cv2.imwrite(str(ijb / "loose_crop" / name), image[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 0])
                    faces[name] = cv2.imread(str(ijb / "loose_crop" / name))[..., ::-1]
                    tid_mid.append(f"{name} {subject * 2 + template + 1} {subject * 10 + template * 2 + media}")
                    landmarks.append(" ".join(f"{v:.4f}" for v in ARCFACE_TEMPLATE.flatten()) + " 0.9")
    (ijb / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (ijb / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(f"{line.split()[0]} {lm}" for line, lm in zip(tid_mid, landmarks)) + "\n")
    pair_lines = [f"{a} {b} {int((a - 1) // 2 == (b - 1) // 2)}" for a in range(1, 7) for b in range(a + 1, 7)]
    (ijb / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pair_lines) + "\n")
    status, report = _run_eval([model_path, "--ijb", str(ijb), "--no-cache", "--out", str(tmp_path / "ijb.json")])
    assert status == 0 and report["alignment"] == {"landmarks": len(tid_mid)}
    meta = read_ijb_meta(ijb, "IJBC")
    warped = [cv2.warpAffine(faces[str(n)], np.float32([[1, 0, 0], [0, 1, 0]]), (SIZE, SIZE)) for n in meta.image_names]
    images = torch.from_numpy(np.stack(warped)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        raw = (model(images) + model(images.flip(3))).numpy()
    expected = ijb_verification(raw, meta, use_detector_score=True)
    assert report["num_pairs"] == 15 and report["eer"] == pytest.approx(expected.eer, abs=1e-3)
    assert report["auc"] == pytest.approx(expected.auc, abs=1e-3)
    # 1:N: gallery of 4 people, probes of 5 (one unknown), 3 distractors.
    def folder(name, people, per_person):
        for person in people:
            (tmp_path / name / person).mkdir(parents=True, exist_ok=True)
            for k in range(per_person):
                cv2.imwrite(str(tmp_path / name / person / f"{k}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    folder("gallery", ["p0", "p1", "p2", "p3"], 2)
    folder("probes", ["p0", "p1", "p2", "p3", "stranger"], 1)
    (tmp_path / "distractors").mkdir()
    for k in range(3):
        cv2.imwrite(str(tmp_path / "distractors" / f"d{k}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    status, report = _run_eval([model_path, "--gallery", str(tmp_path / "gallery"), "--probes", str(tmp_path / "probes"),
                                "--distractors", str(tmp_path / "distractors"), "--no-cache", "--out", str(tmp_path / "id.json")])
    assert status == 0
    def embed_folder(root):
        paths = sorted(p for p in Path(root).rglob("*.png"))
        images = torch.from_numpy(np.stack([cv2.imread(str(p))[..., ::-1] for p in paths]).copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            raw = (model(images) + model(images.flip(3))).numpy().astype(np.float64)
        return raw / np.linalg.norm(raw, axis=1, keepdims=True), [p.parent.name for p in paths]
    (gallery, gallery_labels), (probes, probe_labels), (distractors, _) = (embed_folder(tmp_path / n) for n in ("gallery", "probes", "distractors"))
    expected = identify(gallery, gallery_labels, probes, probe_labels, distractors=distractors)
    assert report["rank1"] == pytest.approx(expected.rank1)
    assert report["cmc"] == pytest.approx(list(expected.cmc))
    assert (report["num_mated_probes"], report["num_non_mated_probes"], report["num_distractors"]) == (4, 1, 3)


# ---------------------------------------------------------------------------- export


@needs_onnx
def test_export_round_trips_through_onnxruntime(tmp_path, capsys):
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 16
    torch.manual_seed(1)
    backbone = create_backbone("mobilefacenet", embedding_size=16).eval()
    torch.save({"config": config_to_dict(config), "step": 1, "backbone": backbone.state_dict()}, tmp_path / "c.pt")
    assert main(["export", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed.splitlines()[0])
    assert "parity: max abs diff" in printed and set(map(int, report["per_batch"])) == {1, 7, 64}
    assert report["max_abs_diff"] <= 1e-4 and report["embedding_size"] == 16
    model, info = load_face_model(tmp_path / "m.onnx")  # our convention is the exported model's
    images = torch.rand(5, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone(images), atol=1e-4, rtol=1e-4)
    metadata = read_onnx_metadata(tmp_path / "m.onnx")
    assert InputSpec.from_metadata(metadata) == InputSpec() and metadata["arcface.embedding_size"] == "16"
    assert len([key for key in metadata if key.startswith("arcface.")]) >= 4 and report["metadata"] == metadata
    checker = pytest.importorskip("onnx")  # the appended metadata leaves a file the onnx package also accepts
    checker.checker.check_model(checker.load(str(tmp_path / "m.onnx")))
    assert main(["export", str(tmp_path / "m.onnx"), "--onnx", str(tmp_path / "again.onnx")]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()


@needs_onnx
def test_an_exported_model_evaluates_without_input_flags_as_its_checkpoint(tmp_path, pair_set):
    pairs, root = pair_set
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 16
    torch.manual_seed(3)
    backbone = create_backbone("mobilefacenet", embedding_size=16).eval()
    torch.save({"config": config_to_dict(config), "step": 1, "backbone": backbone.state_dict()}, tmp_path / "c.pt")
    assert main(["export", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "m.onnx"), "--check-batches", "1"]) == 0
    common = ["--pairs", str(pairs), "--images", str(root)]
    reports = {}
    for name, args in {"checkpoint": [str(tmp_path / "c.pt")], "onnx": [str(tmp_path / "m.onnx")],
                       "onnx_flags": [str(tmp_path / "m.onnx"), "--input-mean", "127.5", "--input-std", "127.5"],
                       "onnx_wrong": [str(tmp_path / "m.onnx"), "--input-mean", "0", "--input-std", "1"]}.items():
        status, reports[name] = _run_eval([*args, *common, "--out", str(tmp_path / f"{name}.json")])
        assert status == 0
    assert reports["onnx"]["accuracy"] == reports["onnx_flags"]["accuracy"]
    assert reports["onnx"]["threshold"] == pytest.approx(reports["onnx_flags"]["threshold"], abs=1e-6)
    assert reports["onnx"]["accuracy"] == pytest.approx(reports["checkpoint"]["accuracy"], abs=1e-3)
    assert reports["onnx"]["threshold"] == pytest.approx(reports["checkpoint"]["threshold"], abs=1e-3)
    # The flags do reach the model: a wrong normalization moves the scores.
    assert reports["onnx_wrong"]["threshold"] != pytest.approx(reports["onnx"]["threshold"], abs=1e-3)


@needs_onnx
def test_export_simplify_keeps_parity_and_a_standard_graph(tmp_path, capsys):
    import onnx
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 16
    torch.manual_seed(2)
    backbone = create_backbone("mobilefacenet", embedding_size=16).eval()
    torch.save({"config": config_to_dict(config), "step": 1, "backbone": backbone.state_dict()}, tmp_path / "c.pt")
    assert main(["export", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "s.onnx"), "--simplify", "--check-batches", "1,7"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed.splitlines()[0])
    assert "simplified" in printed and report["nodes"] < report["nodes_before_simplify"]  # BatchNorms folded at least
    graph = onnx.load(str(tmp_path / "s.onnx"))
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # no onnxruntime-only operators
    model, _ = load_face_model(tmp_path / "s.onnx")
    images = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone(images), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))


@needs_onnx
def test_a_folder_with_one_onnx_model_is_that_model(tmp_path, weight):
    folder = tmp_path / "model"
    folder.mkdir()
    linear_onnx(folder / "face.onnx", weight, [3, SIZE, SIZE])
    (folder / "SOURCE.md").write_text("notes")
    _, info = load_face_model(folder, input_std=128.0)
    assert info.kind == "onnx" and Path(info.path).name == "face.onnx"
    linear_onnx(folder / "other.onnx", weight, [3, SIZE, SIZE])
    with pytest.raises(DataError, match="single .onnx"):
        load_face_model(folder)
