"""The margined softmax cross-entropy of the combined-margin heads, chunked over classes.

For M samples with unit embeddings ``x_b`` and N classes with centers ``W_j`` (K sub-centers each):

    loss = mean_b [ logsumexp_j z_bj - z_{b y_b} ],   z_bj = s * cos(theta_bj)  (j != y_b),
    z_{b y_b} = t_b = s * margined(cos theta_{b y_b})

Three things make this cheap at millions of classes:

- **Exact targets, fast product.** The B target cosines are computed on their own, in float32 (float64
  for float64 inputs), from the B target rows; the margin is applied to those. The (M, N) product
  only supplies the *other* classes' logits, so it may run in the autocast dtype (bf16/fp16 operands,
  float32 accumulation: tensor cores on CUDA) without the margin or the target ever being rounded.
  Its target entries are replaced by ``t_b`` and receive no gradient through the product; ``t_b``'s
  gradient flows through the float32 target path alone.
- **Chunks of classes.** The logsumexp is accumulated chunk by chunk (an online log-sum-exp), and the
  backward recomputes each chunk, so no (M, N) float32 matrix is ever held: memory is one chunk's
  (M, chunk) temporaries plus the (N, D) weight gradient. ``class_chunk=0`` computes all classes in
  one chunk and keeps its logits for backward instead (no recomputation, one (M, N) matrix held).
- **Model parallel.** With centers split over ranks, each rank reduces its own chunks to one local
  log-sum-exp per sample; one MAX all-reduce and one SUM all-reduce of (sum, target) complete the
  global loss, as before chunking. Backward needs no collective.

The center normalization is folded as in :mod:`arcface.heads.cosine`: in float32, the product with raw
centers is scaled per column; in half precision, the chunk's centers are normalized while cast (their
half copy is needed anyway), and the gradient through the normalization keeps its closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .cosine import row_dot

__all__ = [
    "COSINE_PRECISIONS",
    "DEFAULT_CLASS_CHUNK",
    "DEFAULT_COSINE_PRECISION",
    "check_loss_options",
    "class_chunk_for",
    "float32_output_supported",
    "margin_cross_entropy",
    "product_dtype",
]

# "auto": the (B, C) product in the autocast dtype where that was measured to pay (AUTO_HALF_PRODUCT),
# else float32; "autocast": in the autocast dtype on any device; "float32": always full precision.
COSINE_PRECISIONS = ("auto", "autocast", "float32")
DEFAULT_COSINE_PRECISION = "auto"

# Devices where "auto" follows autocast. CUDA: tensor cores. CPU: off by measurement
# (benchmarks/heads.py --variants, C=1e5, a 2-core AMD EPYC with AVX512-BF16, no AMX: step time over
# plain softmax, fastest steps, 4.3x with a bf16 product vs 1.05x in float32; casting the (C, D)
# centers every step costs more than the faster product saves).
AUTO_HALF_PRODUCT = {"cuda": True, "cpu": False}

# Classes per chunk (None in a head means this default for its device); 0 = one chunk kept for backward.
# CPU: 0 (same benchmark: 16384-class chunks 1.19x vs 1.05x, recomputing costs a 4th product there;
# they would save memory, 0.83x vs 1.21x softmax's step memory). CUDA: to be confirmed by
# benchmarks/heads_gpu.py, which measures 4096 / 16384 / 65536 / 0.
DEFAULT_CLASS_CHUNK = {"cpu": 0, "cuda": 16384}

# A zero center gets cosine 0 (not NaN), as in scaled_cosine.
CENTER_NORM_EPS = 1e-12
# Rows per row-wise dot product in backward: on a GPU a chunk's dot products in a few kernels, not one
# per 512 rows (at a million classes those launches alone would cost milliseconds); on a CPU, 512
# rows keep the temporary in cache.
_ROW_DOT_ROWS = {"cpu": 512}
_ROW_DOT_ROWS_ELSEWHERE = 16384
_HALF = (torch.float16, torch.bfloat16)


def check_loss_options(cosine_precision: str, class_chunk: int | None) -> None:
    """Raise ValueError for an unknown precision or a negative chunk size."""
    if cosine_precision not in COSINE_PRECISIONS:
        raise ValueError(f"cosine_precision must be one of {COSINE_PRECISIONS}, got {cosine_precision!r}")
    if class_chunk is not None and (isinstance(class_chunk, bool) or not isinstance(class_chunk, int) or class_chunk < 0):
        raise ValueError(f"class_chunk must be None (the device's default), 0 (one chunk) or a positive int, got {class_chunk!r}")


def product_dtype(cosine_precision: str, device_type: str, compute: torch.dtype) -> torch.dtype:
    """Operand dtype of the (B, C) cosine product for a call made in the current autocast state.

    Call it *before* disabling autocast. ``compute`` is the head's float32 / float64 dtype; float64
    inputs always stay float64 (references and gradchecks).
    """
    if cosine_precision == "float32" or compute == torch.float64:
        return compute
    if not torch.is_autocast_enabled(device_type):
        return compute
    if cosine_precision == "auto" and not AUTO_HALF_PRODUCT.get(device_type, False):
        return compute
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in _HALF else compute


def class_chunk_for(class_chunk: int | None, device_type: str) -> int:
    """The chunk size a head uses on ``device_type``: its own, or the measured default."""
    return DEFAULT_CLASS_CHUNK.get(device_type, 0) if class_chunk is None else class_chunk


@lru_cache(maxsize=None)
def float32_output_supported(device_type: str) -> bool:
    """Whether ``torch.mm(a, b, out_dtype=...)`` (half operands, float32 result) runs on this device."""
    try:
        a = torch.zeros(2, 2, dtype=torch.bfloat16, device=device_type)
        torch.mm(a, a, out_dtype=torch.float32)
        return True
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.dtype) -> torch.Tensor:
    """``a @ b`` in ``out`` dtype; half operands accumulate in float32 (and round once, to ``out``,
    where the device has a float32-output kernel; elsewhere they round to half first)."""
    if a.dtype == out:
        return a @ b
    if float32_output_supported(a.device.type):
        return torch.mm(a, b, out_dtype=out)
    return (a @ b).to(out)


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[...] = a @ b`` for half (or full-precision) operands and a full-precision ``out``."""
    if a.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    return out.copy_(_mm(a, b, out.dtype))


@dataclass(frozen=True)
class _Plan:
    scale: float
    sub_centers: int
    pooling: str  # "max" | "softmax", over the K sub-centers of a class
    target_fn: Callable[[torch.Tensor], torch.Tensor]  # (B,) plain cos -> (B,) margined cos
    class_chunk: int  # classes per chunk, 0: one chunk kept for backward
    product_dtype: torch.dtype
    world_size: int
    process_group: Any


def _pool(z: torch.Tensor, k: int, pooling: str) -> torch.Tensor:
    """(M, n*K) scaled sub-center logits -> (M, n) class logits (a new tensor when K > 1)."""
    if k == 1:
        return z
    zv = z.view(z.shape[0], -1, k)
    if pooling == "max":
        return zv.amax(dim=2)
    return (torch.softmax(zv, dim=2) * zv).sum(dim=2)


def _unpool(grad: torch.Tensor, z: torch.Tensor, k: int, pooling: str) -> torch.Tensor:
    """Gradient w.r.t. the (M, n*K) sub-center logits from the gradient w.r.t. the (M, n) pooled ones."""
    if k == 1:
        return grad
    zv = z.view(z.shape[0], -1, k)
    if pooling == "max":
        out = torch.zeros_like(zv)
        out.scatter_(2, zv.argmax(dim=2, keepdim=True), grad.unsqueeze(2))
    else:
        # pooled = sum_k a_k z_k with a = softmax(z): d pooled / d z_k = a_k (1 + z_k - pooled).
        a = torch.softmax(zv, dim=2)
        pooled = (a * zv).sum(dim=2, keepdim=True)
        out = a.mul_(zv - pooled + 1.0).mul_(grad.unsqueeze(2))
    return out.view(z.shape[0], -1)


def _target_logits(x_rows: torch.Tensor, w_rows: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """(B,) margined, scaled target logits from (B, D) unit embeddings and their (B, K, D) centers."""
    cos = torch.einsum("bd,bkd->bk", x_rows, F.normalize(w_rows, dim=2, eps=CENTER_NORM_EPS))
    if plan.sub_centers > 1:
        cos = _pool(cos * plan.scale, plan.sub_centers, plan.pooling) / plan.scale
    return plan.scale * plan.target_fn(cos.reshape(-1))


def _chunk_rows(weight: torch.Tensor, index: torch.Tensor | None, a: int, b: int, k: int) -> torch.Tensor:
    """The centers of classes [a, b) of the classes in use, (b - a) * K rows."""
    return weight[a * k : b * k] if index is None else weight[index[a:b]]


def _half_centers(rows: torch.Tensor, inv_norm: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unit centers cast to half in one pass (the cast is the copy a half product needs anyway)."""
    out = torch.empty(rows.shape, dtype=dtype, device=rows.device)
    return torch.mul(rows, inv_norm.unsqueeze(1), out=out)


class _MarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_unit, weight, index, target_col, plan: _Plan):
        m, k, s = x_unit.shape[0], plan.sub_centers, plan.scale
        compute, half = x_unit.dtype, plan.product_dtype != x_unit.dtype
        num_classes = index.numel() if index is not None else weight.shape[0] // k
        keep = plan.class_chunk == 0
        chunk = num_classes if keep else min(plan.class_chunk, num_classes)
        # The half product gets s folded into the embeddings: its output is the logits directly.
        x_p = (x_unit * s).to(plan.product_dtype) if half else x_unit
        local = (target_col >= 0).nonzero().squeeze(1)
        cols = target_col[local]
        target = _target_logits(x_unit[local], weight[_target_rows(cols, index, k)], plan)
        inv_norm = torch.empty(num_classes * k, dtype=compute, device=weight.device)
        lse = torch.full((m,), -math.inf, dtype=compute, device=x_unit.device)
        scaled = plan.product_dtype == torch.float16
        chunk_max, chunk_lse, kept = [], [], None
        for a in range(0, num_classes, chunk):
            b = min(a + chunk, num_classes)
            rows = _chunk_rows(weight, index, a, b, k)
            inv = inv_norm[a * k : b * k]
            torch.linalg.vector_norm(rows, dim=1, out=inv)
            inv.clamp_(min=CENTER_NORM_EPS).reciprocal_()
            z = _chunk_logits(x_p, rows, inv, plan, half, compute)
            logits = _pool(z, k, plan.pooling)
            # The product's target entries are left out (exp(-inf) = 0); t enters after the loop.
            _mask_targets(logits, local, cols, a, b)
            if keep:
                kept = z  # with K = 1 also the logits, target entries masked
            chunk_lse.append(torch.logsumexp(logits, dim=1))
            if scaled:
                chunk_max.append(logits.amax(dim=1))
            lse = torch.logaddexp(lse, chunk_lse[-1])
        lse[local] = torch.logaddexp(lse[local], target)
        target_full = torch.zeros(m, dtype=compute, device=x_unit.device)
        target_full[local] = target
        if plan.world_size > 1:
            row_max = lse.clone()
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=plan.process_group)
            stats = torch.stack([(lse - row_max).exp(), target_full], dim=1)
            dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=plan.process_group)
            lse = row_max + stats[:, 0].log()
            target_full = stats[:, 1]
        shifts = None
        if scaled:
            # fp16 (not bf16, whose range is float32's) flushes probabilities below 2^-24 to zero and
            # rounds those below 2^-14 coarsely: at a million classes near initialization every one
            # of them (~1e-6) would lose several percent. The backward casts, per chunk, the
            # probabilities times 2^-shift: the largest non-target one near 1, while any row's sum over
            # the chunk stays below 2^8 (products with half outputs cannot overflow).
            log2 = math.log(2.0)
            largest = (torch.stack(chunk_max) - lse).amax(dim=1) / log2
            row_sum = (torch.stack(chunk_lse) - lse).amax(dim=1) / log2
            shifts = torch.ceil(torch.maximum(largest, row_sum - 8.0)).clamp_(-120.0, 0.0)
        ctx.plan, ctx.chunk, ctx.num_classes = plan, chunk, num_classes
        ctx.save_for_backward(x_unit, weight, index, target_col, inv_norm, lse, kept, shifts)
        return (lse - target_full).mean()

    @staticmethod
    def backward(ctx, grad_output):
        # backward() runs in the autocast state of its caller: this math is as exact as forward's.
        with torch.autocast(device_type=grad_output.device.type, enabled=False):
            return _MarginCrossEntropy._backward(ctx, grad_output)

    @staticmethod
    def _backward(ctx, grad_output):
        x_unit, weight, index, target_col, inv_norm, lse, kept, shifts = ctx.saved_tensors
        plan, chunk, num_classes = ctx.plan, ctx.chunk, ctx.num_classes
        m, k, s = x_unit.shape[0], plan.sub_centers, plan.scale
        compute, half = x_unit.dtype, plan.product_dtype != x_unit.dtype
        coef = grad_output / m
        x_p = (x_unit * s).to(plan.product_dtype) if half else x_unit
        local = (target_col >= 0).nonzero().squeeze(1)
        cols = target_col[local]
        grad_x = torch.zeros_like(x_unit)
        # Every row is written by its chunk, unless only sampled rows are in use.
        grad_w = torch.empty_like(weight) if index is None else torch.zeros_like(weight)
        row_chunk = _ROW_DOT_ROWS.get(weight.device.type, _ROW_DOT_ROWS_ELSEWHERE)
        for c, a in enumerate(range(0, num_classes, chunk)):
            b = min(a + chunk, num_classes)
            rows = _chunk_rows(weight, index, a, b, k)
            inv = inv_norm[a * k : b * k]
            z = kept if kept is not None else _chunk_logits(x_p, rows, inv, plan, half, compute)
            logits = _pool(z, k, plan.pooling)
            if logits is not kept:
                _mask_targets(logits, local, cols, a, b)  # the target's gradient takes the exact path
            base = lse.unsqueeze(1)
            if shifts is not None:
                base = base + shifts[c] * math.log(2.0)
            # Softmax probabilities (times 2^-shift in fp16); in place unless the logits are kept.
            probs = torch.exp(logits - base) if logits is kept else logits.sub_(base).exp_()
            grad_z = _unpool(probs, z, k, plan.pooling)
            # The chunk's center gradients are written straight into their rows of grad_w (a sampled
            # chunk into a buffer first): no second (rows, D) buffer when one chunk holds all classes.
            grad_rows = grad_w[a * k : b * k] if index is None else torch.empty_like(rows)
            if half:
                grad_lp = grad_z.to(plan.product_dtype)
                unscale = 1.0 if shifts is None else torch.exp2(shifts[c])
                w_lp = _half_centers(rows, inv, plan.product_dtype)
                grad_x.add_(_mm(grad_lp, w_lp, compute).mul_(s * unscale))
                _mm_into(grad_lp.t(), x_p, grad_rows).mul_((inv * (unscale * coef)).unsqueeze(1))
            else:
                grad_raw = grad_z.mul_(inv * s)
                grad_x.addmm_(grad_raw, rows)
                torch.mm(grad_raw.t(), x_unit, out=grad_rows).mul_(coef)
            # Only the part orthogonal to each center survives its normalization.
            radial = row_dot(grad_rows, rows, row_chunk) * inv.square()
            grad_rows.addcmul_(rows, radial.unsqueeze(1), value=-1.0)
            if index is not None:
                grad_w.index_copy_(0, index[a:b], grad_rows)
        grad_x.mul_(coef)
        # The target logits: d loss / d t_b = (p_target - 1) / M, through the float32 margin path.
        target_rows = _target_rows(cols, index, k)
        with torch.enable_grad():
            x_rows = x_unit[local].detach().requires_grad_(True)
            w_rows = weight[target_rows].detach().requires_grad_(True)
            target = _target_logits(x_rows, w_rows, plan)
            grad_target = coef * ((target.detach() - lse[local]).exp() - 1.0)
            grad_xt, grad_wt = torch.autograd.grad(target, (x_rows, w_rows), grad_target)
        grad_x.index_add_(0, local, grad_xt)
        grad_w.index_add_(0, target_rows.reshape(-1), grad_wt.reshape(-1, weight.shape[1]))
        return grad_x, grad_w, None, None, None


def _mask_targets(logits: torch.Tensor, local: torch.Tensor, cols: torch.Tensor, a: int, b: int) -> None:
    """Set the target entries of the chunk of classes [a, b) to -inf, in place.

    Written without boolean indexing, whose data-dependent size would stop a CUDA stream once per
    chunk: rows whose target is elsewhere rewrite one entry with its own value.
    """
    col = cols - a
    inside = (col >= 0) & (col < b - a)
    col = col.clamp(0, b - a - 1)
    logits[local, col] = torch.where(inside, -math.inf, logits[local, col])


def _target_rows(cols: torch.Tensor, index: torch.Tensor | None, k: int) -> torch.Tensor:
    """(B, K) rows of ``weight`` holding the sub-centers of each local target class."""
    if index is not None:
        return index[cols].unsqueeze(1)
    return cols.unsqueeze(1) * k + torch.arange(k, device=cols.device)


def _chunk_logits(
    x_p: torch.Tensor, rows: torch.Tensor, inv: torch.Tensor, plan: _Plan, half: bool, compute: torch.dtype
) -> torch.Tensor:
    """(M, rows) scaled cosine logits of one chunk, in ``compute`` dtype."""
    if half:
        return _mm(x_p, _half_centers(rows, inv, plan.product_dtype).t(), compute)
    return (x_p @ rows.t()).mul_(inv * plan.scale)


def margin_cross_entropy(
    x_unit: torch.Tensor,
    weight: torch.Tensor,
    target_col: torch.Tensor,
    *,
    scale: float,
    target_fn: Callable[[torch.Tensor], torch.Tensor],
    sub_centers: int = 1,
    pooling: str = "max",
    index: torch.Tensor | None = None,
    class_chunk: int = 0,
    product: torch.dtype | None = None,
    world_size: int = 1,
    process_group: Any = None,
) -> torch.Tensor:
    """Mean margined cross-entropy over M samples, chunked over classes.

    Args:
        x_unit: (M, D) L2-normalized embeddings, float32 or float64 (the compute dtype).
        weight: (R, D) centers in the compute dtype, any norm; class-major with K rows per class.
        target_col: (M,) long, each sample's class among the classes in use (``index`` positions when
            given), or -1 when another rank holds it.
        scale: s. target_fn: (B,) plain target cosines -> (B,) margined cosines (differentiable).
        sub_centers, pooling: K rows per class and how their cosines pool (``"max"`` / ``"softmax"``).
        index: optional (n,) sorted rows of ``weight`` in use (sampled classes, K = 1); other rows get
            zero gradient.
        class_chunk: classes per chunk, recomputed in backward; 0 keeps one (M, n*K) chunk instead.
        product: operand dtype of the (M, n*K) product (None: the compute dtype).
        world_size, process_group: ranks sharing the classes (the loss is the global mean).

    Returns:
        Scalar loss in the compute dtype, the same on every rank.
    """
    plan = _Plan(
        scale=float(scale), sub_centers=int(sub_centers), pooling=pooling, target_fn=target_fn,
        class_chunk=int(class_chunk), product_dtype=product or x_unit.dtype, world_size=int(world_size),
        process_group=process_group,
    )
    if index is not None and sub_centers != 1:
        raise ValueError("sampled classes (index) need sub_centers=1")
    return _MarginCrossEntropy.apply(x_unit, weight, index, target_col, plan)
