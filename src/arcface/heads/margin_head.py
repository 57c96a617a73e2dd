"""The combined-margin head: normalized cosine logits, a margin on the target logit, cross-entropy.

One class covers NormFace, SphereFace, CosFace, ArcFace and their combination (the ArcFace paper's
Eq. 4), with optional sub-centers (Sub-center ArcFace) and the paper's intra / inter / angular
triplet terms. Presets live in :mod:`arcface.heads.presets`.

Cost: one (B, D) x (D, C*K) matrix product and the (B, C) softmax, as plain softmax; the margin is
computed on the B target cosines only, recomputed in float32 (float64 for float64 inputs) from the B
target rows, so bf16/fp16 training cannot push them outside [-1, 1] or lose the margin to rounding.
The loss (:mod:`arcface.heads.margin_loss`) may run the product in the autocast dtype
(``cosine_precision``) and over chunks of classes (``class_chunk``); ``logits()`` and the cosine
methods stay float32 and materialize their (B, C) result.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DEFAULT_SCALE, check_embeddings, check_head_sizes, check_labels, compute_dtype
from .cosine import scaled_cosine
from .init import DEFAULT_INIT_STD, seeded_normal_rows
from .margin import DEFAULT_MARGINS, DEFAULT_PI_REGION, check_margins, margined_target
from .margin_loss import (
    DEFAULT_COSINE_PRECISION, check_loss_options, class_chunk_for, margin_cross_entropy, product_dtype,
)
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
        seed: None draws the centers from torch's global generator; an int draws them from
            ``seeded_normal_rows(seed, ...)``, the rows a ``PartialFCHead`` with that seed holds.
        cosine_precision: ``"auto"`` runs the (B, C*K) cosine product of the loss in the autocast
            dtype on devices where it pays (CUDA), ``"autocast"`` on any device, ``"float32"``
            never; target cosines and margins are float32 in every mode.
        class_chunk: classes per chunk of the loss (recomputed in backward, so no (B, C) float32
            matrix is held); 0: one chunk kept for backward; None: the device's measured default.

    Attributes:
        weight: (C*K, D) centers, class-major: row ``c*K + k`` is sub-center k of class c.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        scale: float = DEFAULT_SCALE,
        m1: float = DEFAULT_MARGINS[0],
        m2: float = DEFAULT_MARGINS[1],
        m3: float = DEFAULT_MARGINS[2],
        sub_centers: int = 1,
        pooling: str = "max",
        pi_region: str = DEFAULT_PI_REGION,
        straight_through: bool = False,
        intra_weight: float = 0.0,
        inter_weight: float = 0.0,
        triplet_weight: float = 0.0,
        triplet_margin: float = 0.35,
        init_std: float = DEFAULT_INIT_STD,
        seed: int | None = None,
        cosine_precision: str = DEFAULT_COSINE_PRECISION,
        class_chunk: int | None = None,
    ) -> None:
        super().__init__()
        check_head_sizes(num_classes, embedding_size, scale)
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        check_margins(m1, m2, m3, pi_region)
        check_loss_options(cosine_precision, class_chunk)
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
        self.cosine_precision = cosine_precision
        self.class_chunk = class_chunk
        rows = num_classes * sub_centers
        if seed is None:
            self.weight = nn.Parameter(torch.empty(rows, embedding_size))
            nn.init.normal_(self.weight, std=init_std)
        else:
            self.weight = nn.Parameter(seeded_normal_rows(int(seed), 0, rows, embedding_size, init_std))

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
            "cosine_precision": self.cosine_precision,
            "class_chunk": self.class_chunk,
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

    def _margined(self, cos_target: torch.Tensor) -> torch.Tensor:
        """(B,) plain target cosines -> margined ones (see :func:`~arcface.heads.margin.margined_target`)."""
        return margined_target(cos_target, self.m1, self.m2, self.m3, self.pi_region, self.straight_through)

    def _own_cosines(self, x_unit: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) cosines to the sub-centers of each sample's own class, from those B*K rows only."""
        centers = F.normalize(weight[self._target_rows(labels)], dim=2, eps=EMBEDDING_NORM_EPS)
        return torch.einsum("bd,bkd->bk", x_unit, centers)

    def _pooled_target_cosines(self, x_unit: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) cosine to each sample's own class, its sub-centers pooled."""
        cosines = self._own_cosines(x_unit, weight, labels)
        if self.sub_centers == 1:
            return cosines.squeeze(1)
        return self._pool((cosines * self.scale).unsqueeze(1)).squeeze(1) / self.scale

    def _materialized_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margined (B, C) logits in float32 (float64), the whole matrix at once."""
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
            margined = self._margined(cos_target)
            # Add the margin as a delta on the target logit: scatter_add_ passes the logits'
            # gradient through unchanged, where an overwrite would copy the (B, C) gradient.
            delta = (margined - cos_target) * self.scale
            logits.scatter_add_(1, labels.unsqueeze(1), delta.unsqueeze(1).to(logits.dtype))
        return logits

    # ----------------------------------------------------------------------------- public API
    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled, margined class logits (the (B, C) matrix the loss never holds whole).

        Args:
            embeddings: (B, D), any norm, any float dtype (computed in float32 or float64, also
                under autocast, whatever ``cosine_precision`` says).
            labels: (B,) integer class indices in [0, C).

        Returns:
            (B, C) logits: ``s * cos(theta_j)`` for j != y, the margined target logit at y.
        """
        return self._materialized_logits(embeddings, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the margined logits plus the configured extra terms.

        Args:
            embeddings: (B, D), any norm and float dtype. labels: (B,) in [0, C).

        Returns:
            Scalar loss; exactly 0 (attached to the graph) for an empty batch.
        """
        check_embeddings(embeddings, self.embedding_size)
        labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        device = embeddings.device.type
        # Read the autocast state before leaving it: it chooses the product's dtype.
        product = product_dtype(self.cosine_precision, device, compute_dtype(embeddings, self.weight))
        with torch.autocast(device_type=device, enabled=False):
            x_unit, weight = self._unit_inputs(embeddings)
            if labels.numel() == 0:
                return weight.sum() * 0.0 + x_unit.sum() * 0.0
            loss = margin_cross_entropy(
                x_unit, weight, labels, scale=self.scale, target_fn=self._margined, sub_centers=self.sub_centers,
                pooling=self.pooling, class_chunk=class_chunk_for(self.class_chunk, device), product=product,
            )
            if self.intra_weight:
                loss = loss + self.intra_weight * intra_term(self._pooled_target_cosines(x_unit, weight, labels))
            if self.inter_weight:
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
            return self._own_cosines(x_unit, weight, labels)

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
