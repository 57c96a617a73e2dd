"""Input checks shared by every head: shapes, label dtype and range, with messages that say what to fix."""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_SCALE", "check_head_sizes", "check_embeddings", "check_labels", "compute_dtype"]

# The logit scale s of every normalized head (the paper's 64); presets and classes read it from here.
DEFAULT_SCALE = 64.0


def check_head_sizes(num_classes: int, embedding_size: int, scale: float | None = None) -> None:
    """Raise ValueError for a head with no classes, no embedding dimensions, or a non-positive scale."""
    if num_classes < 1 or embedding_size < 1:
        raise ValueError(f"num_classes and embedding_size must be >= 1, got {num_classes}, {embedding_size}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")


def check_embeddings(embeddings: torch.Tensor, embedding_size: int) -> None:
    """Raise ValueError unless embeddings is a floating (B, embedding_size) tensor."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2 or embeddings.shape[1] != embedding_size:
        raise ValueError(
            f"embeddings must have shape (batch, {embedding_size}), got {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a floating-point tensor, got {embeddings.dtype}")


def check_labels(labels: torch.Tensor, batch_size: int, num_classes: int) -> torch.Tensor:
    """Validate class labels and return them as a (B,) int64 tensor.

    Raises:
        ValueError: wrong shape or dtype, or a label outside [0, num_classes), naming the first one.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.reshape(-1) if labels.dim() == 2 and labels.shape[1] == 1 else labels
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"labels must have shape ({batch_size},) to match the embeddings, got {tuple(labels.shape)}"
        )
    if batch_size:
        bad = (labels < 0) | (labels >= num_classes)
        if bool(bad.any()):
            position = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"label {int(labels[position])} at batch position {position} is out of range: "
                f"this head has {num_classes} classes, labels must be in [0, {num_classes - 1}]"
            )
    return labels.long()


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: the dtype of the heads' cosines, margins and
    softmax. Only the (B, C) cosine product of the margin heads may run in half precision (see
    :mod:`arcface.heads.margin_loss`); its target entries are recomputed in this dtype."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype
