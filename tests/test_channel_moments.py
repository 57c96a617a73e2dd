"""Per-channel moments of the BN prior: both formulas (the CPU's matrix products, other devices'
torch.var_mean) against float64 references, in every memory layout, with gradients."""

import pytest
import torch

from arcface.invert.channel_moments import channel_moments

METHODS = ["matmul", "var_mean"]


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


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-3)])
def test_moments_match_the_float64_reference_in_every_layout(dtype, tolerance, method):
    torch.manual_seed(0)
    x = (torch.randn(6, 5, 14, 9) * torch.tensor([0.5, 1, 2, 3, 0.1])[None, :, None, None] + 4).to(dtype)
    expected_variance, expected_mean = reference(x)
    for name, features in layouts(x).items():
        variance, mean = channel_moments(features, method=method)
        assert variance.dtype == mean.dtype == torch.float32, name  # float32 even for bf16 features
        torch.testing.assert_close(mean.double(), expected_mean, rtol=tolerance, atol=0, msg=name)
        torch.testing.assert_close(variance.double(), expected_variance, rtol=10 * tolerance, atol=0, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_matches_autograd_of_the_formula(method):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64) + 2
    weights = torch.randn(2, 4, dtype=torch.float64)
    for name, features in layouts(x).items():
        features = features.detach().requires_grad_(True)
        variance, mean = channel_moments(features, method=method)
        (ours,) = torch.autograd.grad((weights[0] * variance + weights[1] * mean).sum(), features)
        features.grad = None
        expected_variance, expected_mean = torch.var_mean(features, dim=(0, 2, 3), correction=0)
        (expected,) = torch.autograd.grad((weights[0] * expected_variance + weights[1] * expected_mean).sum(), features)
        torch.testing.assert_close(ours, expected, msg=name)
    assert torch.autograd.gradcheck(lambda t: channel_moments(t, method=method), (x[:2, :, :3, :3].clone().requires_grad_(True),))


def test_auto_picks_the_matrix_products_on_the_cpu_and_a_bad_name_is_refused():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    variance, _ = channel_moments(x)
    assert type(variance.grad_fn).__name__ == "_MatmulMomentsBackward"
    with pytest.raises(ValueError, match="method must be one of auto, matmul, var_mean"):
        channel_moments(x, method="welford")
