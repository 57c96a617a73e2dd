"""Margin heads: normalized cosine logits, a margin on the target logit, cross-entropy.

>>> from arcface.heads import create_head
>>> head = create_head("arcface", num_classes=1000, embedding_size=512)   # s=64, m2=0.5
>>> loss = head(embeddings, labels)          # embeddings (B, 512), labels (B,)
>>> logits = head.logits(embeddings, labels)  # (B, 1000), margined at the target
"""

from . import presets as _presets  # noqa: F401  (registers the named heads)
from .cosine import scaled_cosine
from .margin import PI_REGIONS, margined_target
from .margin_head import POOLINGS, MarginHead
from .partial_fc import PartialFCHead, shard_range
from .presets import COMBINED_PRESETS
from .registry import create_head, list_heads, register_head
from .regularizers import angular_triplet_term, inter_term, intra_term
from .softmax import SoftmaxHead

__all__ = [
    "COMBINED_PRESETS",
    "PI_REGIONS",
    "POOLINGS",
    "MarginHead",
    "PartialFCHead",
    "SoftmaxHead",
    "angular_triplet_term",
    "create_head",
    "inter_term",
    "intra_term",
    "list_heads",
    "margined_target",
    "register_head",
    "scaled_cosine",
    "shard_range",
]
