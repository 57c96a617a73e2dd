"""Plain softmax head (the paper's L1): unnormalized linear layer with bias, then cross-entropy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import check_embeddings, check_head_sizes, check_labels, compute_dtype
from .init import DEFAULT_INIT_STD, seeded_normal_rows

__all__ = ["SoftmaxHead"]


class SoftmaxHead(nn.Module):
    """``logits = x W^T + b``; neither embeddings nor centers are normalized, no margin.

    Args:
        num_classes: C. embedding_size: D.
        bias: learn a per-class bias (the paper's softmax baseline has one).
        init_std: standard deviation of the normal initialization of the weights.
        seed: None draws the weights from torch's global generator, an int from
            ``seeded_normal_rows(seed, ...)`` (as the margin heads do).

    Attributes:
        weight: (C, D). bias: (C,) or None.
    """

    sub_centers = 1

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        bias: bool = True,
        init_std: float = DEFAULT_INIT_STD,
        seed: int | None = None,
    ):
        super().__init__()
        check_head_sizes(num_classes, embedding_size)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        if seed is None:
            self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
            nn.init.normal_(self.weight, std=init_std)
        else:
            self.weight = nn.Parameter(seeded_normal_rows(int(seed), 0, num_classes, embedding_size, init_std))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def hparams(self) -> dict:
        """Constructor arguments, for self-describing checkpoints."""
        return {"num_classes": self.num_classes, "embedding_size": self.embedding_size, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.hparams().items())

    def _linear(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            dtype = compute_dtype(embeddings, self.weight)
            bias = None if self.bias is None else self.bias.to(dtype)
            return F.linear(embeddings.to(dtype), self.weight.to(dtype), bias)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) embeddings -> (B, C) logits; labels are only checked (softmax has no margin)."""
        check_embeddings(embeddings, self.embedding_size)
        if labels is not None:
            check_labels(labels, embeddings.shape[0], self.num_classes)
        return self._linear(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy, scalar; 0 (attached to the graph) for an empty batch."""
        check_embeddings(embeddings, self.embedding_size)
        labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        logits = self._linear(embeddings)
        if labels.numel() == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels)
