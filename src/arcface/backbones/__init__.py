"""Backbones: (B, 3, 112, 112) aligned faces -> (B, D) embeddings. No classifier here.

>>> from arcface.backbones import create_backbone
>>> model = create_backbone("iresnet50", embedding_size=512)
>>> embeddings = model(faces)    # faces (B, 3, 112, 112), (pixel - 127.5) / 127.5
"""

from .insightface import INSIGHTFACE_NAMES, from_insightface
from .iresnet import IRESNET_DEPTHS, IResNet
from .mobilefacenet import MobileFaceNet
from .registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "INSIGHTFACE_NAMES",
    "IRESNET_DEPTHS",
    "IResNet",
    "MobileFaceNet",
    "create_backbone",
    "from_insightface",
    "list_backbones",
    "register_backbone",
]
