"""Name-keyed registry of backbones: ``create_backbone("iresnet50", embedding_size=512)``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..registry import Registry
from .iresnet import IRESNET_DEPTHS, IResNet
from .mobilefacenet import MobileFaceNet

__all__ = ["register_backbone", "create_backbone", "list_backbones"]

_BACKBONES: Registry[nn.Module] = Registry("backbone")


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(embedding_size=512, dropout=0.0, **kw) -> backbone``."""
    return _BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return _BACKBONES.names()


def create_backbone(name: str, embedding_size: int = 512, dropout: float = 0.0, **kwargs) -> nn.Module:
    """Build a registered backbone mapping (B, 3, 112, 112) faces to (B, embedding_size)."""
    return _BACKBONES.create(name, embedding_size=embedding_size, dropout=dropout, **kwargs)


def _iresnet_factory(depth: int):
    def factory(embedding_size: int = 512, dropout: float = 0.0, **kwargs) -> IResNet:
        return IResNet(depth, embedding_size=embedding_size, dropout=dropout, **kwargs)

    return factory


for _depth in IRESNET_DEPTHS:
    register_backbone(f"iresnet{_depth}")(_iresnet_factory(_depth))


@register_backbone("mobilefacenet")
def _mobilefacenet(embedding_size: int = 512, dropout: float = 0.0, **kwargs) -> MobileFaceNet:
    if kwargs.pop("activation_checkpointing", False):
        raise ValueError("activation_checkpointing is offered for the IResNets; MobileFaceNet is small enough without")
    return MobileFaceNet(embedding_size=embedding_size, dropout=dropout, **kwargs)
