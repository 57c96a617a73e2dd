"""Sub-center ArcFace cleaning rules (paper, Section 3.2 and Figure 7), as functions of cosines.

After training with K sub-centers per class, each sample is nearest to one sub-center of its own
class. The sub-center most of a class's samples are nearest to is the class's *dominant* one: it
holds the clean faces, while the others collect hard faces and noise. A sample whose angle to its
class's dominant sub-center exceeds a threshold (75 degrees) is dropped as noise.

Figure 7's four groups, by the sub-center a sample is nearest to and its angle to that sub-center:
easy clean (dominant, small angle), hard noisy (dominant, large angle), hard clean (non-dominant,
small angle), easy noisy (non-dominant, large angle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CATEGORIES", "SubcenterDecision", "dominant_subcenters", "decide", "dominant_weight"]

CATEGORIES = ("easy_clean", "hard_noisy", "hard_clean", "easy_noisy")


def dominant_subcenters(nearest: torch.Tensor, labels: torch.Tensor, num_classes: int, sub_centers: int) -> torch.Tensor:
    """The dominant sub-center of each class: the one most of its samples are nearest to.

    Args:
        nearest: (N,) index in [0, K) of each sample's nearest own-class sub-center.
        labels: (N,) class of each sample, in [0, C).
    Returns:
        (C,) int64; ties go to the lower index; a class without samples gets 0.
    """
    votes = torch.zeros(num_classes * sub_centers, dtype=torch.int64)
    votes.index_add_(0, labels.long() * sub_centers + nearest.long(), torch.ones_like(labels, dtype=torch.int64))
    return votes.view(num_classes, sub_centers).argmax(dim=1)  # argmax returns the first maximum


@dataclass(frozen=True)
class SubcenterDecision:
    """Per-sample results of the cleaning rule (all (N,) tensors)."""

    dominant_angle: torch.Tensor  # degrees to the own class's dominant sub-center
    nearest_angle: torch.Tensor  # degrees to the nearest own-class sub-center
    nearest_is_dominant: torch.Tensor  # bool
    keep: torch.Tensor  # bool: dominant_angle <= threshold
    category: torch.Tensor  # int64 index into CATEGORIES


def _degrees(cosine: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.arccos(cosine.double().clamp(-1.0, 1.0)))


def decide(cosines: torch.Tensor, labels: torch.Tensor, dominant: torch.Tensor, threshold_deg: float = 75.0) -> SubcenterDecision:
    """Apply the angle rule.

    Args:
        cosines: (N, K) cosine of each sample to each sub-center of its own class.
        labels: (N,) class of each sample.
        dominant: (C,) dominant sub-center of each class (from :func:`dominant_subcenters`).
        threshold_deg: drop samples farther than this from their dominant sub-center.
    """
    if not 0.0 < threshold_deg < 180.0:
        raise ValueError(f"the angle threshold must be between 0 and 180 degrees, got {threshold_deg}")
    if cosines.ndim != 2 or cosines.shape[0] != labels.shape[0]:
        raise ValueError(f"cosines must be (N, K) for N={labels.shape[0]} labels, got {tuple(cosines.shape)}")
    own_dominant = dominant[labels.long()]
    dominant_cos = cosines.gather(1, own_dominant[:, None])[:, 0]
    nearest_cos, nearest = cosines.max(dim=1)
    nearest_is_dominant = nearest == own_dominant
    dominant_angle, nearest_angle = _degrees(dominant_cos), _degrees(nearest_cos)
    large = nearest_angle > threshold_deg
    category = torch.where(nearest_is_dominant, large.long(), 2 + large.long())  # order of CATEGORIES
    return SubcenterDecision(dominant_angle, nearest_angle, nearest_is_dominant, dominant_angle <= threshold_deg, category)


def dominant_weight(weight: torch.Tensor, dominant: torch.Tensor, sub_centers: int) -> torch.Tensor:
    """(C, D) centers of a K=1 head from a (C*K, D) sub-center weight: each class's dominant row.

    For fine-tuning on the cleaned data instead of retraining from scratch.
    """
    if weight.shape[0] != dominant.shape[0] * sub_centers:
        raise ValueError(f"weight has {weight.shape[0]} rows; expected {dominant.shape[0]} classes x {sub_centers} sub-centers")
    rows = torch.arange(dominant.shape[0]) * sub_centers + dominant.long()
    return weight[rows].clone()


