"""Activation checkpointing that leaves BatchNorm running statistics as if it were off.

``torch.utils.checkpoint`` recomputes a block's forward during backward; in training mode every
BatchNorm in the block would then update its running mean/variance a second time with the same
batch (insightface's ``using_ckpt`` has this slip). During the recomputation we set each
BatchNorm's momentum to 0, which leaves the running statistics bit-identical, and restore the
batch counter afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed"]


@contextlib.contextmanager
def _frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            if count is not None:
                norm.num_batches_tracked.copy_(count)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its activations recomputed in backward instead of stored."""
    return checkpoint(
        module,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_batchnorm_statistics(module)),
    )
