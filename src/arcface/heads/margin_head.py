"""The combined-margin head: normalized cosine logits, a margin on the target logit, cross-entropy.

One class covers NormFace, SphereFace, CosFace, ArcFace and their combination (the ArcFace paper's
Eq. 4), with optional sub-centers (Sub-center ArcFace) and the paper's intra / inter / angular
triplet terms. Presets live in :mod:`arcface.heads.presets`.

Cost: one (B, D) x (D, C*K) matrix product and the (B, C) softmax, as plain softmax; the margin is
computed on the B target cosines only. Cosines are float32 (float64 for float64 inputs) even under
autocast, so bf16/fp16 training cannot push them outside [-1, 1] or lose the margin to rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import check_embeddings, check_head_sizes, check_labels, compute_dtype
from .cosine import scaled_cosine
from .margin import check_margins, margined_target
from .regularizers import angular_triplet_term, inter_term, intra_term

__all__ = ["MarginHead", "POOLINGS"]

POOLINGS = ("max", "softmax")

# A zero embedding is normalized with this floor on its norm: it gets cosine 0 to every center
# (theta = 90 degrees) and a finite gradient, instead of NaN.
EMBEDDING_NORM_EPS = 1e-12


class MarginHead(nn.Module):
    """Class centers plus the combined margin ``s * (cos(m1*theta + m2) - m3)`` on the target.

    Args:
        num_classes: C, number of identities.
        embedding_size: D.
        scale: s, the logit scale (64 in the paper).
        m1, m2, m3: multiplicative angular, additive angular (radians), additive cosine margins.
        sub_centers: K centers per class; the class cosine pools over them.
        pooling: ``"max"`` (Sub-center ArcFace) or ``"softmax"``: the average of the K cosines
            weighted by ``softmax(scale * cos)``, a smooth max that stays inside [-1, 1].
        pi_region: what happens where ``m1*theta + m2`` passes pi, see :mod:`arcface.heads.margin`.
        straight_through: apply the margin as a constant (no gradient through it), as insightface's
            ``arcface_torch`` does: the forward value is the same, the gradient is that of the
            plain scaled cosine. Default False: the exact gradient of the margined logit.
        intra_weight, inter_weight: weights of the paper's intra-loss (added) and inter-loss
            (subtracted) terms; 1.0 gives the paper's L5 / L6.
        triplet_weight, triplet_margin: weight and angular margin of the batch-hard angular triplet.
        init_std: standard deviation of the normal initialization of the centers.

    Attributes:
        weight: (C*K, D) centers, class-major: row ``c*K + k`` is sub-center k of class c.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        sub_centers: int = 1,
        pooling: str = "max",
        pi_region: str = "fallback",
        straight_through: bool = False,
        intra_weight: float = 0.0,
        inter_weight: float = 0.0,
        triplet_weight: float = 0.0,
        triplet_margin: float = 0.35,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        check_head_sizes(num_classes, embedding_size, scale)
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        check_margins(m1, m2, m3, pi_region)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.scale = float(scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.sub_centers = int(sub_centers)
        self.pooling = pooling
        self.pi_region = pi_region
        self.straight_through = bool(straight_through)
        self.intra_weight = float(intra_weight)
        self.inter_weight = float(inter_weight)
        self.triplet_weight = float(triplet_weight)
        self.triplet_margin = float(triplet_margin)
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centers, embedding_size))
        nn.init.normal_(self.weight, std=init_std)

    def hparams(self) -> dict:
        """Constructor arguments, for self-describing checkpoints."""
        return {
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "scale": self.scale,
            "m1": self.m1,
            "m2": self.m2,
            "m3": self.m3,
            "sub_centers": self.sub_centers,
            "pooling": self.pooling,
            "pi_region": self.pi_region,
            "straight_through": self.straight_through,
            "intra_weight": self.intra_weight,
            "inter_weight": self.inter_weight,
            "triplet_weight": self.triplet_weight,
            "triplet_margin": self.triplet_margin,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.hparams().items())

    # ----------------------------------------------------------------------------- internals
    def _unit_inputs(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_embeddings(embeddings, self.embedding_size)
        dtype = compute_dtype(embeddings, self.weight)
        x_unit = F.normalize(embeddings.to(dtype), dim=1, eps=EMBEDDING_NORM_EPS)
        return x_unit, self.weight.to(dtype)

    def _pool(self, scaled: torch.Tensor) -> torch.Tensor:
        """(B, C, K) scaled cosines -> (B, C), pooled over the K sub-centers."""
        if self.pooling == "max":
            return scaled.max(dim=2).values
        return (torch.softmax(scaled, dim=2) * scaled).sum(dim=2)

    def _target_rows(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) rows of ``weight`` holding the sub-centers of each sample's class."""
        k = torch.arange(self.sub_centers, device=labels.device)
        return labels.unsqueeze(1) * self.sub_centers + k

    def _forward_parts(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Margined logits (B, C), plain target cosine (B,), unit embeddings, checked labels."""
        check_embeddings(embeddings, self.embedding_size)
        labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x_unit, weight = self._unit_inputs(embeddings)
            scaled, target_cos = scaled_cosine(x_unit, weight, self.scale, self._target_rows(labels))
            if self.sub_centers == 1:
                logits = scaled
                cos_target = target_cos.squeeze(1)
            else:
                logits = self._pool(scaled.view(-1, self.num_classes, self.sub_centers))
                cos_target = self._pool(target_cos.unsqueeze(1) * self.scale).squeeze(1) / self.scale
            margined = margined_target(cos_target, self.m1, self.m2, self.m3, self.pi_region)
            if self.straight_through:
                margined = cos_target + (margined - cos_target).detach()
            # Add the margin as a delta on the target logit: scatter_add_ passes the logits'
            # gradient through unchanged, where an overwrite would copy the (B, C) gradient.
            delta = (margined - cos_target) * self.scale
            logits.scatter_add_(1, labels.unsqueeze(1), delta.unsqueeze(1).to(logits.dtype))
        return logits, cos_target, x_unit, labels

    # ----------------------------------------------------------------------------- public API
    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled, margined class logits.

        Args:
            embeddings: (B, D), any norm, any float dtype (computed in float32 or float64).
            labels: (B,) integer class indices in [0, C).

        Returns:
            (B, C) logits: ``s * cos(theta_j)`` for j != y, the margined target logit at y.
        """
        return self._forward_parts(embeddings, labels)[0]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the margined logits plus the configured extra terms.

        Args:
            embeddings: (B, D). labels: (B,) in [0, C).

        Returns:
            Scalar loss; exactly 0 (attached to the graph) for an empty batch.
        """
        logits, cos_target, x_unit, labels = self._forward_parts(embeddings, labels)
        if labels.numel() == 0:
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits, labels)
        if self.intra_weight:
            loss = loss + self.intra_weight * intra_term(cos_target)
        if self.inter_weight:
            weight = self.weight.to(x_unit.dtype)
            loss = loss - self.inter_weight * inter_term(weight, labels, self.sub_centers)
        if self.triplet_weight:
            loss = loss + self.triplet_weight * angular_triplet_term(x_unit, labels, self.triplet_margin)
        return loss

    def class_subcenter_cosines(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cosine between each sample and each sub-center of its own class, (B, K).

        Computed from the B*K needed centers only, so it streams over datasets of any size.
        """
        check_embeddings(embeddings, self.embedding_size)
        labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x_unit, weight = self._unit_inputs(embeddings)
            centers = F.normalize(weight[self._target_rows(labels)], dim=2, eps=EMBEDDING_NORM_EPS)
            return torch.einsum("bd,bkd->bk", x_unit, centers)

    def assign_subcenters(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest sub-center of the own class and the cosines to all of them.

        Returns:
            index: (B,) in [0, K), the sub-center max pooling chooses.
            cosines: (B, K) cosine to each sub-center of the own class.
        """
        cosines = self.class_subcenter_cosines(embeddings, labels)
        return cosines.argmax(dim=1), cosines

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine to every sub-center of every class, (B, C, K) (no margin, no scale)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x_unit, weight = self._unit_inputs(embeddings)
            scaled, _ = scaled_cosine(x_unit, weight, 1.0)
        return scaled.view(-1, self.num_classes, self.sub_centers)
