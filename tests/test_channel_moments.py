"""Per-channel moments of the BN prior: against float64 references, in every memory layout, with gradients."""

import pytest
import torch

from arcface.invert.channel_moments import channel_moments


def layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "nchw": x.contiguous(),
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": torch.cat([x, x], dim=3)[..., ::2],  # neither layout: the plain-sum fallback
    }


def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    mean = values.sum(1) / values.shape[1]
    return ((values - mean[:, None]) ** 2).sum(1) / values.shape[1], mean


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-3)])
def test_moments_match_the_float64_reference_in_every_layout(dtype, tolerance):
    torch.manual_seed(0)
    x = (torch.randn(6, 5, 14, 9) * torch.tensor([0.5, 1, 2, 3, 0.1])[None, :, None, None] + 4).to(dtype)
    expected_variance, expected_mean = reference(x)
    for name, features in layouts(x).items():
        variance, mean = channel_moments(features)
        assert variance.dtype == mean.dtype == torch.float32, name  # float32 even for bf16 features
        torch.testing.assert_close(mean.double(), expected_mean, rtol=tolerance, atol=0, msg=name)
        torch.testing.assert_close(variance.double(), expected_variance, rtol=10 * tolerance, atol=0, msg=name)


def test_gradient_matches_autograd_of_the_formula():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64) + 2
    weights = torch.randn(2, 4, dtype=torch.float64)
    for name, features in layouts(x).items():
        features = features.detach().requires_grad_(True)
        variance, mean = channel_moments(features)
        (ours,) = torch.autograd.grad((weights[0] * variance + weights[1] * mean).sum(), features)
        features.grad = None
        expected_variance, expected_mean = torch.var_mean(features, dim=(0, 2, 3), correction=0)
        (expected,) = torch.autograd.grad((weights[0] * expected_variance + weights[1] * expected_mean).sum(), features)
        torch.testing.assert_close(ours, expected, msg=name)
    assert torch.autograd.gradcheck(lambda t: channel_moments(t), (x[:2, :, :3, :3].clone().requires_grad_(True),))
