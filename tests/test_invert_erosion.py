"""Layer erosion (random ghosts of the inverted network): against the formula, and with the BN prior.

The inversion with erosion on: tests/test_invert.py (the options falling, repeating, changing the images)."""

import pytest
import torch

from arcface.invert import BNStatistics
from arcface.invert.erosion import LayerErosion
from test_invert import Tiny, reference_bn_loss


def test_each_batchnorm_output_is_scaled_by_one_bounded_gain_per_image():
    model = Tiny().eval()
    images = torch.rand(5, 3, 112, 112) * 2 - 1
    outputs = {}
    with torch.no_grad(), LayerErosion(model, 0.3, torch.Generator().manual_seed(0)):
        # registered after the erosion's hook, so it sees the output the next layer gets
        model.bn1.register_forward_hook(lambda m, i, o: outputs.__setitem__("bn1", (i[0], o)))
        model(images)
    features, eroded = outputs["bn1"]
    plain = torch.nn.functional.batch_norm(features, model.bn1.running_mean, model.bn1.running_var, model.bn1.weight,
                                           model.bn1.bias, eps=model.bn1.eps)  # the layer's formula, no hooks
    gain = eroded / plain
    per_image = gain.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image), rtol=1e-4, atol=1e-4)
    assert ((per_image[:, 0] >= 0.7) & (per_image[:, 0] <= 1.3)).all() and per_image[:, 0].std() > 0.01


def test_zero_strength_and_leaving_the_context_give_the_network_back():
    model = Tiny().eval()
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        plain = model(images)
        with LayerErosion(model, 0.0, torch.Generator().manual_seed(0)):
            assert torch.equal(model(images), plain)
        with LayerErosion(model, 0.5, torch.Generator().manual_seed(0)):
            assert not torch.allclose(model(images), plain)
        assert torch.equal(model(images), plain)
    with pytest.raises(ValueError, match="erosion strength"):
        LayerErosion(model, 1.0, torch.Generator())


def first_layer_term(model: Tiny, images: torch.Tensor) -> float:
    """The prior's term of the first BatchNorm layer, from the formula (its input is the first conv's output)."""
    features, bn = model.conv1(images).detach().double(), model.bn1
    mean = features.mean((0, 2, 3))
    std = torch.sqrt(features.var((0, 2, 3), unbiased=False) + bn.eps)
    stored_std = torch.sqrt(bn.running_var.double() + bn.eps)
    return float(torch.linalg.vector_norm(mean - bn.running_mean.double()) + torch.linalg.vector_norm(std - stored_std))


def test_the_prior_reads_inputs_so_a_gain_moves_only_later_layers():
    """The first layer's term is that of the plain network; the second layer's follows the eroded first."""
    model = Tiny().eval()
    images = torch.rand(4, 3, 112, 112) * 2 - 1
    prior = BNStatistics(model)
    with torch.no_grad(), prior, LayerErosion(model, 0.5, torch.Generator().manual_seed(1)):
        model(images)
        first, second = (float(t) for t in prior._terms)
    plain_first = first_layer_term(model, images)
    plain_second = reference_bn_loss(model, images) - plain_first
    assert first == pytest.approx(plain_first, rel=1e-4)
    assert abs(second - plain_second) > 1e-3 * plain_second  # the second layer saw the eroded first
