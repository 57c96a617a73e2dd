"""Downloads (through file:// URLs: no network in tests), recipe files, and the LFW recipe's preparation."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile

import pytest

from arcface.configs import list_recipes, recipe_path
from arcface.data import DataError
from arcface.data.download import download, fetch_lfw
from arcface.recipes.lfw import find_lfw, prepare_lfw
from arcface.train.config import load_config
from conftest import shared_path


def test_download_copies_atomically_and_checks_the_checksum(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"weights")
    target = download(source.as_uri(), tmp_path / "out" / "model.onnx")
    assert target.read_bytes() == b"weights"
    with pytest.raises(DataError, match="checksum mismatch"):
        download(source.as_uri(), tmp_path / "out" / "other.onnx", sha256="0" * 64)
    assert not (tmp_path / "out" / "other.onnx").exists()
    with pytest.raises(DataError, match="download failed"):
        download((tmp_path / "missing").as_uri(), tmp_path / "out" / "x")


def test_fetch_lfw_lays_out_images_and_protocol_files(tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    for name in ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt", "people.txt", "peopleDevTrain.txt", "peopleDevTest.txt"):
        (server / name).write_text("1\n")
    with tarfile.open(server / "lfw-deepfunneled.tgz", "w:gz") as tar:
        data = b"\xff\xd8\xff fake jpeg"
        info = tarfile.TarInfo("lfw-deepfunneled/Ann/Ann_0001.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    checksums = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in server.iterdir()}
    lfw = fetch_lfw(tmp_path / "lfw", base_url=server.as_uri(), checksums=checksums)
    assert (lfw / "images" / "Ann" / "Ann_0001.jpg").read_bytes() == data
    assert (lfw / "pairsDevTest.txt").exists()


def _build_recipe(name: str):
    """(config, backbone, head) of a recipe, built as the trainer builds them (one process, 10 classes)."""
    import torch

    from arcface.backbones import create_backbone
    from arcface.train.head_state import build_training_head

    config = load_config(recipe_path(name))
    model = config.model
    torch.manual_seed(0)
    backbone = create_backbone(model.backbone, embedding_size=model.embedding_size, dropout=model.dropout,
                               **({"activation_checkpointing": True} if model.activation_checkpointing else {}))
    head = build_training_head(config.head, 10, model.embedding_size, rank=0, world_size=1, seed=config.seed)
    return config, backbone, head


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_builds_its_model_and_head(name):
    """Backbone and head of each recipe: they agree on the embedding size, the head gives a finite loss
    on embeddings of that size and carries the recipe's margins and class sampling."""
    import torch

    config, backbone, head = _build_recipe(name)
    size = config.model.embedding_size
    assert backbone.embedding_size == size
    loss = head(torch.randn(4, size, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 7, 9]))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    hparams = head.hparams()
    assert hparams["num_classes"] == 10 and hparams["embedding_size"] == size
    for key in ("scale", "m1", "m2", "m3"):
        if getattr(config.head, key) is not None:
            assert hparams[key] == getattr(config.head, key), key
    assert hparams.get("sample_rate", 1.0) == config.head.sample_rate


# A training-mode forward of an IResNet-100 takes seconds on a CPU: those recipes embed a face in the slow suite.
_HEAVY_BACKBONES = {"iresnet100", "iresnet200"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if load_config(recipe_path(name)).model.backbone in _HEAVY_BACKBONES else [])
    for name in list_recipes()
])
def test_every_shipped_recipe_embeds_faces_into_its_head(name):
    import torch

    config, backbone, head = _build_recipe(name)
    with torch.no_grad():  # training mode, as the trainer runs it (an untrained network in eval mode overflows)
        embeddings = backbone.train()(torch.rand(2, 3, 112, 112) * 2 - 1)
        loss = head(embeddings, torch.tensor([3, 7]))
    assert embeddings.shape == (2, config.model.embedding_size) and torch.isfinite(embeddings).all() and torch.isfinite(loss)


def test_published_recipes_carry_their_published_settings():
    glint = load_config(recipe_path("glint360k_r100"))
    assert (glint.model.backbone, glint.head.sample_rate, glint.head.m3) == ("iresnet100", 0.1, 0.4)
    assert load_config(recipe_path("webface42m_r100_pfc02")).head.sample_rate == 0.2
    r50 = load_config(recipe_path("ms1mv2_r50"))
    assert (r50.model.backbone, r50.head.m2, r50.optim.lr, r50.schedule.epochs) == ("iresnet50", 0.5, 0.1, 20.0)


def test_find_lfw_names_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="missing images, pairsDevTest.txt, peopleDevTrain.txt"):
        find_lfw(str(tmp_path))


def test_prepare_lfw_builds_the_devtrain_list(tmp_path):
    lfw = shared_path("data/lfw_deepfunneled")
    detector = shared_path("data/models/yunet/face_detection_yunet_2026may.onnx")
    # A two-person LFW look-alike, to keep the test short: same layout, same protocol file format.
    small = tmp_path / "lfw"
    (small / "images").mkdir(parents=True)
    for name, count in (("Aaron_Peirsol", 4), ("Abdullah", 4)):
        shutil.copytree(lfw / "images" / name, small / "images" / name)
    (small / "peopleDevTrain.txt").write_text("3\nAaron_Peirsol\t4\nAbdullah\t4\nAaron_Eckhart\t1\n")
    (small / "pairsDevTest.txt").write_text("0\n")
    listing, aligned = prepare_lfw(small, detector, tmp_path / "cache", workers=1)
    lines = listing.read_text().splitlines()
    assert len(lines) == 8 and {line.rsplit(" ", 1)[1] for line in lines} == {"0", "1"}
    assert (aligned / "Abdullah" / "Abdullah_0004.jpg").exists()
