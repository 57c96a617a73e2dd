"""The model layer: the input spec, checkpoints rebuilt through the registries, ONNX metadata."""

import numpy as np
import pytest
import torch

from arcface.backbones import create_backbone
from arcface.heads import create_head
from arcface.input_spec import DEFAULT_INPUT_SPEC, InputSpec
from arcface.model import CheckpointError, SpecAdapter, checkpoint_input_spec, load_trained_model
from arcface.train.config import TrainConfig, config_to_dict


@pytest.mark.parametrize("spec", [InputSpec(), InputSpec(mean=127.5, std=128.0), InputSpec(mean=0.0, std=255.0, channel_order="BGR")])
def test_normalize_follows_the_formula_and_round_trips(spec):
    pixels = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    reference = (pixels.double() - spec.mean) / spec.std
    if spec.bgr:
        reference = reference[:, [2, 1, 0]]
    normalized = spec.normalize(pixels)
    assert normalized.dtype == torch.float32
    torch.testing.assert_close(normalized.double(), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(spec.to_pixels(normalized), pixels.float(), atol=1e-4, rtol=0)
    floats = pixels.float()
    spec.normalize(floats)
    assert torch.equal(floats, pixels.float())  # never in place on the caller's tensor
    # Images made for our models, fed to a model of this spec: the same pixels, its normalization.
    ours = DEFAULT_INPUT_SPEC.normalize(pixels)
    torch.testing.assert_close(spec.convert(ours, DEFAULT_INPUT_SPEC), normalized, atol=1e-5, rtol=0)


def test_the_spec_travels_as_metadata_and_as_a_dict():
    spec = InputSpec(size=112, mean=127.5, std=128.0, channel_order="BGR", layout="NHWC")
    metadata = spec.to_metadata()
    assert all(key.startswith("arcface.") for key in metadata) and len(metadata) >= 4
    assert InputSpec.from_metadata({**metadata, "other": "x"}) == spec
    assert InputSpec.from_metadata({"producer": "someone"}) is None
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="malformed"):
        InputSpec.from_metadata({"arcface.input_std": "wide"})
    for bad in ({"std": 0.0}, {"std": float("nan")}, {"channel_order": "GBR"}, {"layout": "CHW"}, {"size": 0}):
        with pytest.raises(ValueError):
            InputSpec(**bad)


def _checkpoint(tmp_path, head_name="subcenter_arcface", with_spec=True):
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 8
    config.head.name, config.head.m2 = head_name, 0.4
    torch.manual_seed(0)
    backbone = create_backbone("mobilefacenet", embedding_size=8).eval()
    head = create_head(head_name, num_classes=5, embedding_size=8, m2=0.4)
    state = {"config": config_to_dict(config), "step": 3, "num_classes": 5, "backbone": backbone.state_dict(),
             "head": {k: v.clone() for k, v in head.state_dict().items()}}
    if with_spec:
        state["input_spec"] = InputSpec(std=128.0).to_dict()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "step_00000003.pt")
    return backbone, head


def test_a_checkpoint_is_rebuilt_through_the_registries(tmp_path):
    backbone, head = _checkpoint(tmp_path)
    trained = load_trained_model(tmp_path / "run", need_head=True)
    assert trained.path.name == "step_00000003.pt" and trained.input_spec == InputSpec(std=128.0)
    assert trained.num_classes == 5 and trained.embedding_size == 8
    assert trained.head.sub_centers == 3 and trained.head.m2 == 0.4
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(trained.backbone(faces), backbone(faces))
    embeddings, labels = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(trained.head.double().class_subcenter_cosines(embeddings, labels),
                               head.double().class_subcenter_cosines(embeddings, labels))
    assert load_trained_model(tmp_path / "run").head is None


def test_a_checkpoint_without_a_spec_or_a_head(tmp_path):
    _checkpoint(tmp_path, head_name="arcface", with_spec=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert checkpoint_input_spec(state) == DEFAULT_INPUT_SPEC  # written before the spec was stored
    del state["head"]
    torch.save(state, tmp_path / "nohead.pt")
    with pytest.raises(CheckpointError, match="no classification head"):
        load_trained_model(tmp_path / "nohead.pt", need_head=True)
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_trained_model(tmp_path)


def test_spec_adapter_feeds_a_model_of_another_spec():
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    model.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    target = InputSpec(mean=0.0, std=255.0, channel_order="BGR")
    pixels = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    SpecAdapter(model, target)(DEFAULT_INPUT_SPEC.normalize(pixels))
    np.testing.assert_allclose(seen[0].numpy(), target.normalize(pixels).numpy(), atol=1e-5)
