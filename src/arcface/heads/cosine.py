"""Scaled cosine logits between normalized embeddings and class centers, without a normalized copy.

A margin head needs ``s * cos(theta_bj) = s * <x_b, W_j> / ||W_j||`` for every sample b and every
class center j. The obvious ``F.linear(x, F.normalize(W))`` materializes a normalized copy of the
(C, D) center matrix and, in backward, another (C, D) temporary for the normalization's gradient;
at a million classes those dominate the step's memory. Here the per-center normalization is folded
into a per-column scale of the (B, C) product, and the backward uses the closed form of the
gradient through the normalization (the component of the raw gradient orthogonal to each center),
computed in place on the (C, D) weight gradient. The B target cosines that the margin needs are
returned alongside, so callers never ``gather`` from (and thereby pin) the big logit matrix.
"""

from __future__ import annotations

import torch

__all__ = ["scaled_cosine", "row_dot"]

# Rows per chunk for the (C, D) row-wise dot product in backward: bounds its temporary memory.
_ROW_DOT_CHUNK = 512


def row_dot(a: torch.Tensor, b: torch.Tensor, chunk: int = _ROW_DOT_CHUNK) -> torch.Tensor:
    """Row-wise dot products of two (N, D) matrices, (N,), with O(chunk * D) temporary memory."""
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], chunk):
        stop = start + chunk
        torch.sum(a[start:stop] * b[start:stop], dim=1, out=out[start:stop])
    return out


class _ScaledCosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_unit, weight, scale, target_index, eps):
        inv_norm = torch.linalg.vector_norm(weight, dim=1).clamp_min(eps).reciprocal()
        logits = x_unit @ weight.t()
        target_cos = None
        if target_index is not None:
            target_cos = logits.gather(1, target_index) * inv_norm[target_index]
        logits.mul_(inv_norm * scale)
        ctx.scale = scale
        ctx.device_type = x_unit.device.type
        ctx.has_target = target_index is not None
        ctx.save_for_backward(x_unit, weight, inv_norm, target_index)
        if target_cos is None:
            target_cos = logits.new_empty(0)
        return logits, target_cos

    @staticmethod
    def backward(ctx, grad_logits, grad_target):
        # backward() runs in the autocast state of its caller: keep the float32 (float64) math.
        with torch.autocast(device_type=ctx.device_type, enabled=False):
            return _ScaledCosine._backward(ctx, grad_logits, grad_target)

    @staticmethod
    def _backward(ctx, grad_logits, grad_target):
        x_unit, weight, inv_norm, target_index = ctx.saved_tensors
        # d(out_bj)/d(<x_b, W_j>) is scale * inv_norm_j for the logits and inv_norm_j for targets.
        if grad_logits is None:
            grad_raw = x_unit.new_zeros(x_unit.shape[0], weight.shape[0])
        else:
            grad_raw = grad_logits * (inv_norm * ctx.scale)
        if ctx.has_target and grad_target is not None:
            grad_raw.scatter_add_(1, target_index, grad_target * inv_norm[target_index])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_raw @ weight
        if ctx.needs_input_grad[1]:
            # grad_W_j = A_j - <A_j, W_j> W_j / ||W_j||^2 with A = grad_raw^T x: only the part of the
            # raw gradient orthogonal to W_j survives the normalization.
            grad_w = grad_raw.t() @ x_unit
            radial = row_dot(grad_w, weight) * inv_norm.square()
            grad_w.addcmul_(weight, radial.unsqueeze(1), value=-1.0)
        return grad_x, grad_w, None, None, None


def scaled_cosine(
    x_unit: torch.Tensor,
    weight: torch.Tensor,
    scale: float = 1.0,
    target_index: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled cosine logits against L2-normalized centers, plus selected unscaled cosines.

    Args:
        x_unit: (B, D) embeddings, already L2-normalized.
        weight: (N, D) class (or sub-class) centers, any norm; normalized implicitly.
        scale: the logit scale s.
        target_index: optional (B, K) long tensor of center indices per sample whose plain
            cosines are returned as the second output (gradients flow through both outputs).
        eps: floor of the center norms (a zero center gives cosine 0, not NaN).

    Returns:
        logits: (B, N), ``scale * cos(theta_bj)``; safe to modify in place.
        target_cos: (B, K) ``cos(theta)`` at ``target_index`` (empty when it is None).
    """
    return _ScaledCosine.apply(x_unit, weight, float(scale), target_index, eps)
