"""Name-keyed registry of heads: ``create_head("arcface", num_classes=..., embedding_size=...)``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..registry import Registry

__all__ = ["register_head", "create_head", "list_heads"]

_HEADS: Registry[nn.Module] = Registry("head")


def register_head(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(num_classes, embedding_size, **kw) -> head``."""
    return _HEADS.register(name)


def list_heads() -> list[str]:
    """Names of all registered heads, sorted."""
    return _HEADS.names()


def create_head(name: str, num_classes: int, embedding_size: int = 512, **kwargs) -> nn.Module:
    """Build a registered head; keyword arguments override the preset's defaults.

    The margin presets also take ``world_size``, ``rank``, ``sample_rate`` (and ``process_group``):
    with ``world_size > 1`` or ``sample_rate < 1`` they return a
    :class:`~arcface.heads.partial_fc.PartialFCHead` with the preset's margins.
    """
    return _HEADS.create(name, num_classes=num_classes, embedding_size=embedding_size, **kwargs)
