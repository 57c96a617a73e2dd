"""Name-keyed registry of heads: ``create_head("arcface", num_classes=..., embedding_size=...)``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["register_head", "create_head", "list_heads"]

_HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(num_classes, embedding_size, **kw) -> head``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        _HEADS[name] = factory
        return factory

    return decorator


def list_heads() -> list[str]:
    """Names of all registered heads, sorted."""
    return sorted(_HEADS)


def create_head(name: str, num_classes: int, embedding_size: int = 512, **kwargs) -> nn.Module:
    """Build a registered head; keyword arguments override the preset's defaults."""
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; available: {', '.join(list_heads())}")
    return _HEADS[name](num_classes=num_classes, embedding_size=embedding_size, **kwargs)
