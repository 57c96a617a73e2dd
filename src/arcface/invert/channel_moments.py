"""Per-channel mean and variance of a feature map, fast on the CPU, for the BatchNorm prior.

On the CPU, ``torch.var_mean(x, dim=(0, 2, 3))`` of a bf16 feature map runs far below memory speed
(reductions over the outer dimensions of a channels-last tensor) and its backward takes several more
passes. Here the sums are matrix products with a vector of ones (per image, so each rounded bf16 sum
covers one image and the float32 total over the batch averages their rounding), and the backward is
one fused pass: d/dx of (mean_c, var_c) is ``g_mean / M + 2 g_var (x - mean_c) / M`` with M the
values per channel. ``benchmarks/inversion_speed.py`` measures the step; other devices keep
``torch.var_mean``. Either formula runs on any device when asked for by name (tests compare both with
a float64 reference on the CPU).
"""

from __future__ import annotations

import torch

__all__ = ["channel_moments", "MOMENT_METHODS"]

# "auto": matrix products on the CPU, torch.var_mean elsewhere.
MOMENT_METHODS = ("auto", "matmul", "var_mean")


def channel_sums(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (C,) sums over N, H, W (float32, float64 for float64), by matrix products with ones."""
    n, c, h, w = features.shape
    total = torch.promote_types(features.dtype, torch.float32)
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        per_image = torch.bmm(features.new_ones(n, 1, h * w), features.permute(0, 2, 3, 1).reshape(n, h * w, c))
        return per_image.view(n, c).to(total).sum(0)
    if features.is_contiguous():
        per_image = features.reshape(n * c, h * w) @ features.new_ones(h * w, 1)
        return per_image.view(n, c).to(total).sum(0)
    return features.sum(dim=(0, 2, 3), dtype=total)


class _MatmulMoments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = features.numel() // features.shape[1]
        mean = channel_sums(features) / count
        # two passes (centred on the batch mean), so the variance does not cancel mean**2 away
        centred = features - mean.to(features.dtype)[None, :, None, None]
        variance = channel_sums(centred * centred) / count
        ctx.save_for_backward(features, mean)
        ctx.count = count
        return variance, mean

    @staticmethod
    def backward(ctx, grad_variance: torch.Tensor, grad_mean: torch.Tensor) -> torch.Tensor:
        features, mean = ctx.saved_tensors
        slope = 2 * grad_variance / ctx.count
        offset = grad_mean / ctx.count - slope * mean
        shape = (1, -1, 1, 1)
        return torch.addcmul(offset.to(features.dtype).view(shape), slope.to(features.dtype).view(shape), features)


def channel_moments(features: torch.Tensor, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Biased variance and mean per channel, float32 (float64 for float64), differentiable.

    Args:
        features: (N, C, H, W), any float dtype.
        method: "matmul" (sums as matrix products, one-pass backward), "var_mean" (``torch.var_mean``),
            or "auto": "matmul" on the CPU, "var_mean" on other devices.

    Returns:
        (variance (C,), mean (C,)), the order of ``torch.var_mean``.
    """
    if method not in MOMENT_METHODS:
        raise ValueError(f"method must be one of {', '.join(MOMENT_METHODS)}, got {method!r}")
    if method == "auto":
        method = "matmul" if features.device.type == "cpu" else "var_mean"
    if method == "matmul":
        return _MatmulMoments.apply(features)
    variance, mean = torch.var_mean(features, dim=(0, 2, 3), correction=0)
    total = torch.promote_types(features.dtype, torch.float32)
    return variance.to(total), mean.to(total)
