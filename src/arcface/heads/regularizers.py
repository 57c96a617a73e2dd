"""The angular terms of the ArcFace paper's ablation, composable with any normalized head.

- Intra-loss (paper's L5 = L2 + intra): mean target angle over pi, pulls samples to their center.
- Inter-loss (paper's L6 = L2 - inter): mean angle between each sample's center and every other
  center, over pi, subtracted: pushes centers apart.
- Angular triplet: ``max(0, arccos<x_a, x_p> + m - arccos<x_a, x_n>)``, m = 0.35 in the paper's code,
  with batch-hard mining (the farthest positive and nearest negative of each anchor in the batch),
  which costs O(B^2) rather than the O(B^3) of all triplets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cosine import scaled_cosine
from .margin import COSINE_CLAMP_EPS

__all__ = ["safe_arccos", "intra_term", "inter_term", "angular_triplet_term"]


def safe_arccos(cos: torch.Tensor) -> torch.Tensor:
    """arccos in at least float32, clamped strictly inside [-1, 1] so its gradient stays finite."""
    cos = cos.to(torch.promote_types(cos.dtype, torch.float32))
    return torch.arccos(cos.clamp(-1.0 + COSINE_CLAMP_EPS, 1.0 - COSINE_CLAMP_EPS))


def intra_term(cos_target: torch.Tensor) -> torch.Tensor:
    """Mean of theta_y / pi. cos_target: (B,) cosine to the own class center. Returns a scalar."""
    return safe_arccos(cos_target).mean() / math.pi


def inter_term(weight: torch.Tensor, labels: torch.Tensor, sub_centers: int = 1) -> torch.Tensor:
    """Mean over the batch of the mean angle (over pi) between the own center and all others.

    Args:
        weight: (C*K, D) centers, class-major (row c*K + k).
        labels: (B,) class indices.
        sub_centers: K; each of the class's K sub-centers is compared with every sub-center of
            every other class.

    Returns:
        A scalar, to be *subtracted* from the loss (larger is better).
    """
    num_classes = weight.shape[0] // sub_centers
    if num_classes < 2 or labels.numel() == 0:
        return weight.sum() * 0.0
    rows = (labels.unsqueeze(1) * sub_centers + torch.arange(sub_centers, device=labels.device))
    own = F.normalize(weight[rows.reshape(-1)], dim=1)  # (B*K, D)
    cos, _ = scaled_cosine(own, weight)  # (B*K, C*K)
    angles = safe_arccos(cos).view(-1, num_classes, sub_centers)
    own_class = labels.repeat_interleave(sub_centers)
    others = torch.ones_like(angles[:, :, 0], dtype=torch.bool)
    others[torch.arange(others.shape[0], device=others.device), own_class] = False
    per_row = (angles * others.unsqueeze(2)).sum(dim=(1, 2)) / ((num_classes - 1) * sub_centers)
    return per_row.mean() / math.pi


def angular_triplet_term(x_unit: torch.Tensor, labels: torch.Tensor, margin: float = 0.35) -> torch.Tensor:
    """Batch-hard angular triplet hinge, averaged over anchors that have a positive and a negative.

    Args:
        x_unit: (B, D) L2-normalized embeddings.
        labels: (B,) class indices.
        margin: angular margin m in radians.

    Returns:
        A scalar; 0 (still attached to the graph) when no anchor has both.
    """
    angles = safe_arccos(x_unit @ x_unit.t())  # (B, B)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    not_self = ~torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    positive = same & not_self
    negative = ~same
    usable = positive.any(dim=1) & negative.any(dim=1)
    if not bool(usable.any()):
        return x_unit.sum() * 0.0
    hardest_pos = angles.masked_fill(~positive, -1.0).amax(dim=1)
    hardest_neg = angles.masked_fill(~negative, 4.0).amin(dim=1)  # 4 > pi: never the min
    hinge = F.relu(hardest_pos + margin - hardest_neg)
    return hinge[usable].mean()
