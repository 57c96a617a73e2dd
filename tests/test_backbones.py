"""Registry-wide backbone properties: shapes, gradients, determinism, precision modes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arcface.backbones import create_backbone, list_backbones

BACKBONES = list_backbones()


def _faces(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def _calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Set running statistics to one batch's: an untrained deep IResNet with its insightface init
    overflows in eval mode with the default running statistics (they describe no real input)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(_faces(8, seed=99))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request):
    torch.manual_seed(0)
    model = create_backbone(request.param)
    _calibrate_batchnorm(model)
    return request.param, model


def test_registry_lists_the_paper_family():
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet"} <= set(BACKBONES)


def test_train_step_shapes_finite_and_every_parameter_gets_a_gradient(backbone):
    name, model = backbone
    model.train()
    out = model(_faces(2))
    assert out.shape == (2, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # In train mode a bias right before a BatchNorm gets exactly zero gradient (the batch mean
    # absorbs it), so reachability is checked in eval mode, where every BN is a fixed affine map.
    model.eval()
    model.zero_grad(set_to_none=True)
    model(_faces(2)).pow(2).sum().backward()
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, f"{name}.{param_name} got no gradient"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"{name}.{param_name}"
    model.zero_grad(set_to_none=True)


def test_eval_is_deterministic_and_works_at_batch_one(backbone):
    _, model = backbone
    model.eval()
    faces = _faces(3, seed=1)
    with torch.no_grad():
        first, second = model(faces), model(faces)
        single = model(faces[:1])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert single.shape == (1, 512)
    torch.testing.assert_close(single, first[:1], rtol=1e-4, atol=1e-4)


def test_bf16_channels_last_is_finite_and_close_to_fp32(backbone):
    _, model = backbone
    model.eval()
    faces = _faces(2, seed=2)
    with torch.no_grad():
        reference = model(faces)
        fast_model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_model(faces.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    assert fast.dtype == torch.float32  # the embedding layers run in full precision
    assert torch.isfinite(fast).all()
    assert F.cosine_similarity(fast, reference).min() > 0.99


@pytest.mark.parametrize(
    "shape, message",
    [((2, 3, 96, 96), r"\(B, 3, 112, 112\)"), ((2, 1, 112, 112), r"\(B, 3, 112, 112\)"), ((3, 112, 112), r"got \(3, 112, 112\)")],
)
def test_wrong_input_is_a_clear_error(backbone, shape, message):
    _, model = backbone
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_embedding_size_and_dropout_options(name):
    model = create_backbone(name, embedding_size=128, dropout=0.4).eval()
    with torch.no_grad():
        assert model(_faces(2)).shape == (2, 128)
    with pytest.raises(ValueError, match="dropout"):
        create_backbone(name, dropout=1.5)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*iresnet50"):
        create_backbone("resnet50")


def test_activation_checkpointing_matches_plain_training_exactly():
    torch.manual_seed(3)
    plain = create_backbone("iresnet18").train()
    checkpointed = create_backbone("iresnet18", activation_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    faces = _faces(2, seed=4)
    outputs = []
    for model in (plain, checkpointed):
        out = model(faces)
        out.pow(2).sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1])
    grads = dict(plain.named_parameters())
    for name, param in checkpointed.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name].grad, msg=name)
    # BatchNorm statistics are updated once per step, not again during the recomputation.
    buffers = dict(plain.named_buffers())
    for name, buffer in checkpointed.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], rtol=0, atol=0, msg=name)


def test_mobilefacenet_rejects_activation_checkpointing():
    with pytest.raises(ValueError, match="activation_checkpointing"):
        create_backbone("mobilefacenet", activation_checkpointing=True)


def test_grouped_stem_conv_stays_float32_under_autocast():
    from arcface.backbones.mobilefacenet import Float32Conv2d

    model = create_backbone("mobilefacenet")
    grouped = [m for m in model.modules() if isinstance(m, Float32Conv2d)]
    assert [m.groups for m in grouped] == [64]  # only the stem's grouped conv; depthwise ones stay bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert grouped[0](torch.randn(1, 128, 8, 8)).dtype == torch.float32
