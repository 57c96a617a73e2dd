"""PReLU with a faster backward on CPU, a drop-in for ``nn.PReLU`` (same ``weight`` parameter).

PyTorch's PReLU backward materializes a per-element weight gradient the size of the input and
then reduces it; measured here on a bf16 channels_last (16, 64, 56, 56) map it takes 11.7 ms
against 0.7 ms for the forward, and it made PReLU backward 21% of an IResNet-50 training step.
Splitting the incoming gradient at x > 0 with the ReLU backward kernel gives the same numbers
(exactly, in float32 and float64) in about half the time, and keeps the channels_last layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PReLU", "prelu"]


class _PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.prelu(x, weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        with torch.autocast(device_type=x.device.type, enabled=False):
            grad = grad.to(x.dtype)
            slope = weight.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 else weight.to(x.dtype)
            # Few passes and fresh buffers matter more than op count: these maps are tens of MB,
            # and each new buffer costs page faults. Two allocations, reused in place.
            grad_positive = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
            grad_negative = grad - grad_positive
            grad_x = grad_positive.addcmul_(grad_negative, slope) if ctx.needs_input_grad[0] else None
            grad_weight = None
            if ctx.needs_input_grad[1]:
                reduce_dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
                # bf16/fp16 sums accumulate in float32 internally; no float32 copy of the map.
                per_channel = grad_negative.mul_(x).sum(dim=reduce_dims)
                per_channel = per_channel.to(torch.promote_types(per_channel.dtype, torch.float32))
                grad_weight = (per_channel.sum() if weight.numel() == 1 else per_channel).to(weight.dtype)
                grad_weight = grad_weight.reshape(weight.shape)
        return grad_x, grad_weight


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu(x, weight)`` with the faster backward; x (N, C, ...) and weight (C,) or (1,)."""
    return _PReLUFunction.apply(x, weight)


class PReLU(nn.PReLU):
    """``nn.PReLU`` with the faster backward; state_dict-compatible (one ``weight`` of shape (C,))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prelu(x, self.weight)
