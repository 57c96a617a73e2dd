"""Partial FC: a margin head whose class centers are split over ranks (model parallel).

With millions of identities the (C, D) center matrix and the (B, C) logits no longer fit one
device. Here rank r of N keeps only the contiguous class range ``shard_range(C, r, N)``; every rank
sees the embeddings of the whole global batch (one all-gather) and computes the logits against its
own centers; a cross-entropy that reduces its max, sum of exponentials and target logit over ranks
gives the same loss as a single process holding all classes. ``sample_rate < 1`` (Partial FC v2)
also keeps, per step, only the centers of the classes present in the global batch plus a random
share of the others, which cuts the logits' cost in proportion.

How it sits in a trainer:

- the backbone is wrapped in DDP; this head is not (its parameters differ on every rank and must
  not be averaged). Its weight gradient is the exact gradient of the global loss w.r.t. the shard.
- every rank passes its own part of the global batch, all of the same size B, and gets back the
  same scalar: the mean loss over the N*B samples.
- checkpoints keep ``full_weight()`` (and ``gather_rows`` of the optimizer state), so a run can
  resume with a different number of processes through ``load_full_weight`` / ``shard_rows``.

Written from the description of insightface's ``partial_fc_v2``; the margin, the folded center
normalization and the numerics are those of :class:`~arcface.heads.margin_head.MarginHead`.
With ``world_size=1`` no collective is ever called, so the head runs without any process group.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .base import DEFAULT_SCALE, check_embeddings, check_head_sizes, check_labels, compute_dtype
from .init import DEFAULT_INIT_STD, seeded_normal_rows
from .margin import DEFAULT_MARGINS, DEFAULT_PI_REGION, check_margins, margined_target
from .margin_head import EMBEDDING_NORM_EPS
from .margin_loss import (
    DEFAULT_COSINE_PRECISION, check_loss_options, class_chunk_for, margin_cross_entropy, product_dtype,
)

log = logging.getLogger(__name__)

__all__ = ["PartialFCHead", "shard_range"]


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous class range ``[start, end)`` that ``rank`` owns.

    Shard sizes are ``C // N``, one more for the first ``C % N`` ranks, so they differ by at most one.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}] for world_size {world_size}, got {rank}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _AllGatherRows(torch.autograd.Function):
    """Concatenate every rank's (B, D) rows into (N*B, D), in rank order.

    Backward: every rank's loss is the same global mean L, but rank r's graph only holds the part of
    dL/d(all embeddings) that flows through its own shard of the logits. The all-reduce (SUM) adds
    those parts, giving the full dL/d(all embeddings) on every rank, of which rank r keeps its own
    rows: dL/d(local embeddings). The backbone then produces g_r = dL/d(theta) through its local
    samples only, and the true gradient is sum_r g_r. DDP AVERAGES the backbone gradients over the
    N ranks, so the local gradient is multiplied by N here: DDP's (1/N) * sum_r (N * g_r) is then
    exactly dL/d(theta). (insightface's partial FC uses the same convention.) A consequence that
    tests rely on: the embedding gradient on a rank is N times the matching rows of the gradient of
    the single-process loss.
    """

    @staticmethod
    def forward(ctx, local, rank, world_size, group):
        ctx.rank, ctx.world_size, ctx.group = rank, world_size, group
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        rows = grad.shape[0] // ctx.world_size
        local = grad[ctx.rank * rows : (ctx.rank + 1) * rows]
        return local * ctx.world_size, None, None, None


class PartialFCHead(nn.Module):
    """Combined-margin head ``s * (cos(m1*theta + m2) - m3)`` with class centers sharded over ranks.

    Args:
        num_classes: C, the global number of identities.
        embedding_size: D.
        rank, world_size: this process and the number of processes sharing the centers (passed in;
            the head never starts a process group, and with ``world_size=1`` needs none).
        sample_rate: fraction of this rank's centers entering the logits each step (Partial FC v2);
            the classes of the global batch are always kept. 1.0 uses all of them.
        scale: s. m1, m2, m3: multiplicative angular, additive angular (radians), additive cosine
            margins; the defaults are MarginHead's (no margin): build a loss through its preset,
            ``create_head("arcface", ..., world_size=N, rank=r, sample_rate=...)``.
        pi_region: what happens where ``m1*theta + m2`` passes pi, see :mod:`arcface.heads.margin`.
        straight_through: apply the margin as a constant in backward, as in ``MarginHead``.
        init_std: standard deviation of the normal initialization of the centers.
        process_group: the group of the ``world_size`` ranks (None: the default group).
        seed: seeds the initialization (the full (C, D) matrix is drawn and this rank keeps its rows,
            so the shards of any world size concatenate to the single-process weight) and the
            center sampler (``seed + rank``, a generator on the centers' device).
        sub_centers: not supported; any value but 1 raises.
        cosine_precision, class_chunk: as in ``MarginHead`` (the product's dtype under autocast,
            classes per chunk of the loss).

    Attributes:
        weight: (num_local, D) centers of classes ``class_start .. class_end - 1``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        rank: int = 0,
        world_size: int = 1,
        sample_rate: float = 1.0,
        scale: float = DEFAULT_SCALE,
        m1: float = DEFAULT_MARGINS[0],
        m2: float = DEFAULT_MARGINS[1],
        m3: float = DEFAULT_MARGINS[2],
        pi_region: str = DEFAULT_PI_REGION,
        straight_through: bool = False,
        init_std: float = DEFAULT_INIT_STD,
        process_group: dist.ProcessGroup | None = None,
        seed: int = 0,
        sub_centers: int = 1,
        cosine_precision: str = DEFAULT_COSINE_PRECISION,
        class_chunk: int | None = None,
    ) -> None:
        super().__init__()
        check_head_sizes(num_classes, embedding_size, scale)
        if sub_centers != 1:
            raise ValueError(
                f"PartialFCHead does not support sub-centers (got sub_centers={sub_centers}); "
                f"use create_head('subcenter_arcface', ...) on a single device, or sub_centers=1"
            )
        if num_classes < world_size:
            raise ValueError(
                f"num_classes ({num_classes}) must be >= world_size ({world_size}): every rank needs a class"
            )
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        check_margins(m1, m2, m3, pi_region)
        check_loss_options(cosine_precision, class_chunk)
        self.class_start, self.class_end = shard_range(num_classes, rank, world_size)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.sample_rate = float(sample_rate)
        self.scale = float(scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.pi_region = pi_region
        self.straight_through = bool(straight_through)
        self.seed = int(seed)
        self.cosine_precision = cosine_precision
        self.class_chunk = class_chunk
        self.process_group = process_group
        # Only this shard's rows are drawn (block-seeded): they equal the same rows of a
        # single-process head with the same seed, without ever holding the full matrix.
        self.weight = nn.Parameter(seeded_normal_rows(self.seed, self.class_start, self.class_end, embedding_size, init_std))
        self._sampler = torch.Generator().manual_seed(self.seed + self.rank)

    @property
    def num_local(self) -> int:
        """Number of classes (rows of ``weight``) on this rank."""
        return self.class_end - self.class_start

    def hparams(self) -> dict:
        """Constructor arguments that do not depend on the process layout, for checkpoints."""
        return {
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "sample_rate": self.sample_rate,
            "scale": self.scale,
            "m1": self.m1,
            "m2": self.m2,
            "m3": self.m3,
            "pi_region": self.pi_region,
            "straight_through": self.straight_through,
            "seed": self.seed,
            "cosine_precision": self.cosine_precision,
            "class_chunk": self.class_chunk,
        }

    def extra_repr(self) -> str:
        layout = f"rank={self.rank}, world_size={self.world_size}, classes=[{self.class_start}, {self.class_end})"
        return layout + ", " + ", ".join(f"{key}={value}" for key, value in self.hparams().items())

    # ----------------------------------------------------------------------------- sampler state
    def _generator(self) -> torch.Generator:
        """The center sampler, on the centers' device (drawing there needs no host round trip).

        The head is built on the CPU and moved before training; a generator left on another device
        is replaced by a fresh one seeded as at construction (``seed + rank``).
        """
        if self._sampler.device != self.weight.device:
            log.debug("center sampler moved to %s, reseeded", self.weight.device)
            self._sampler = torch.Generator(device=self.weight.device).manual_seed(self.seed + self.rank)
        return self._sampler

    def sampler_state(self) -> torch.Tensor:
        """The center sampler's generator state (a uint8 CPU tensor, for its device), for checkpoints."""
        return self._generator().get_state()

    def load_sampler_state(self, state: torch.Tensor) -> None:
        """Restore a state from :meth:`sampler_state` (of the same rank, to replay the same draws).

        A state saved on another kind of device (its generator has another state size) cannot be
        replayed here: the sampler then keeps its seeded state, with a warning.
        """
        generator = self._generator()
        state = state.detach().to("cpu", torch.uint8)
        if state.numel() != generator.get_state().numel():
            log.warning(
                "the checkpoint's center-sampler state is from another device type (%d bytes, %s needs %d): "
                "sampling continues from the seed, so the sampled classes differ from an uninterrupted run",
                state.numel(), generator.device, generator.get_state().numel(),
            )
            return
        generator.set_state(state)

    def sample_centers(self, labels: torch.Tensor) -> torch.Tensor:
        """Rows of this rank's shard that enter the logits this step; draws from the sampler.

        Args:
            labels: (N*B,) labels of the whole global batch, on the centers' device.

        Returns:
            (num_sample,) sorted long indices into ``weight``, on its device: every class of the shard
            present in ``labels``, plus uniformly random others, ``max(positives, int(sample_rate *
            num_local))`` in all (at least one, so that no rank ends up with an empty softmax share).
        """
        generator = self._generator()
        device = generator.device
        in_shard = (labels >= self.class_start) & (labels < self.class_end)
        positives = torch.unique(labels[in_shard] - self.class_start).to(device)
        num_sample = max(positives.numel(), int(self.sample_rate * self.num_local), 1)
        num_sample = min(num_sample, self.num_local)
        # One uniform score per row; positives score 2, above any draw, so top-k always keeps them.
        # The draw does not depend on the labels, so the generator advances the same way every step.
        scores = torch.rand(self.num_local, generator=generator, device=device)
        scores[positives] = 2.0
        return torch.topk(scores, num_sample, sorted=False).indices.sort().values

    # ----------------------------------------------------------------------------- collectives
    def _check_group(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"PartialFCHead(world_size={self.world_size}) needs an initialized process group: call "
                f"torch.distributed.init_process_group first, or use world_size=1"
            )
        group_size = dist.get_world_size(self.process_group)
        group_rank = dist.get_rank(self.process_group)
        if (group_rank, group_size) != (self.rank, self.world_size):
            raise RuntimeError(
                f"PartialFCHead was built for rank {self.rank} of {self.world_size}, but this process is "
                f"rank {group_rank} of {group_size} in its process group"
            )

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Validate the local inputs; with several ranks, agree on the outcome before any gather.

        A rank that raised alone would leave the others waiting forever in the next collective, so
        every rank shares its batch size and whether its inputs were valid, and all raise together.
        """
        if self.world_size == 1:
            check_embeddings(embeddings, self.embedding_size)
            return check_labels(labels, embeddings.shape[0], self.num_classes)
        self._check_group()
        error = None
        try:
            check_embeddings(embeddings, self.embedding_size)
            labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        except ValueError as exc:
            error = exc
        batch = embeddings.shape[0] if embeddings.dim() >= 1 else -1
        info = torch.tensor([batch, error is not None], dtype=torch.long, device=embeddings.device)
        infos = [torch.empty_like(info) for _ in range(self.world_size)]
        dist.all_gather(infos, info, group=self.process_group)
        if error is not None:
            raise error
        bad = [rank for rank, item in enumerate(infos) if item[1]]
        if bad:
            raise ValueError(
                f"the inputs of rank(s) {bad} are invalid (the error raised there names the problem); "
                f"rank {self.rank} stops too, so that no rank waits in a collective"
            )
        sizes = [int(item[0]) for item in infos]
        if len(set(sizes)) > 1:
            raise ValueError(
                f"every rank must pass the same batch size to PartialFCHead, got {sizes} for ranks "
                f"0..{self.world_size - 1}; drop the last incomplete batch (drop_last=True) or pad it"
            )
        return labels

    def _gather_labels(self, labels: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(parts, labels.contiguous(), group=self.process_group)
        return torch.cat(parts)

    # ----------------------------------------------------------------------------- forward
    def _margined(self, cos_target: torch.Tensor) -> torch.Tensor:
        """(B,) plain target cosines -> margined ones (see :func:`~arcface.heads.margin.margined_target`)."""
        return margined_target(cos_target, self.m1, self.m2, self.m3, self.pi_region, self.straight_through)

    def _target_columns(self, labels: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """(M,) each sample's column among the classes in use on this rank, -1 when another rank has it."""
        target_col = torch.full_like(labels, -1)
        rows = ((labels >= self.class_start) & (labels < self.class_end)).nonzero().squeeze(1)
        shard_row = labels[rows] - self.class_start
        if index is None:
            target_col[rows] = shard_row
        else:
            position = torch.full((self.num_local,), -1, dtype=torch.long, device=labels.device)
            position[index] = torch.arange(index.numel(), device=labels.device)
            target_col[rows] = position[shard_row]
        return target_col

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        """Mean margined cross-entropy over the global batch (all ranks' samples).

        Args:
            local_embeddings: (B, D), this rank's samples, any norm and float dtype (target cosines
                and margins in float32, or float64 for float64 inputs; the (N*B, n) product in the
                autocast dtype as ``cosine_precision`` says).
            local_labels: (B,) global class indices in [0, C). B must be the same on every rank.

        Returns:
            Scalar loss, the same value on every rank; exactly 0 (attached) for an empty batch.
        """
        labels = self._check_inputs(local_embeddings, local_labels)
        if labels.numel() == 0:  # every rank agreed on B = 0
            return self.weight.sum() * 0.0 + local_embeddings.sum() * 0.0
        device = local_embeddings.device.type
        dtype = compute_dtype(local_embeddings, self.weight)
        product = product_dtype(self.cosine_precision, device, dtype)  # read before leaving autocast
        with torch.autocast(device_type=device, enabled=False):
            embeddings = local_embeddings.to(dtype)
            if self.world_size > 1:
                embeddings = _AllGatherRows.apply(embeddings, self.rank, self.world_size, self.process_group)
                labels = self._gather_labels(labels)
            x_unit = F.normalize(embeddings, dim=1, eps=EMBEDDING_NORM_EPS)
            # Sampled rows are read chunk by chunk inside the loss (no (n, D) copy); the others get
            # zero gradient.
            index = self.sample_centers(labels) if self.sample_rate < 1.0 else None
            return margin_cross_entropy(
                x_unit, self.weight.to(dtype), self._target_columns(labels, index), scale=self.scale,
                target_fn=self._margined, index=index, class_chunk=class_chunk_for(self.class_chunk, device),
                product=product, world_size=self.world_size, process_group=self.process_group,
            )

    # ----------------------------------------------------------------------------- resharding
    def _check_rows(self, tensor: torch.Tensor, rows: int, what: str) -> None:
        if tensor.dim() < 1 or tensor.shape[0] != rows:
            raise ValueError(f"{what} must have {rows} rows, got shape {tuple(tensor.shape)}")

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's (num_local, ...) rows of a per-class tensor -> the full (C, ...) on every rank.

        For the weight and optimizer state (momentum) when checkpointing. A collective with several
        ranks: every rank must call it.
        """
        self._check_rows(tensor, self.num_local, f"a tensor of rank {self.rank}'s shard")
        tensor = tensor.detach()
        if self.world_size == 1:
            return tensor.clone()
        self._check_group()
        # all_gather needs equal sizes: pad every shard to the largest (the first), trim after.
        largest = shard_range(self.num_classes, 0, self.world_size)
        padded = tensor.new_zeros((largest[1] - largest[0], *tensor.shape[1:]))
        padded[: self.num_local] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.process_group)
        ranges = [shard_range(self.num_classes, r, self.world_size) for r in range(self.world_size)]
        return torch.cat([part[: end - start] for part, (start, end) in zip(parts, ranges)])

    def shard_rows(self, full: torch.Tensor) -> torch.Tensor:
        """The (num_local, ...) rows of this rank from a full (C, ...) per-class tensor (a copy)."""
        self._check_rows(full, self.num_classes, "a full per-class tensor")
        return full[self.class_start : self.class_end].detach().clone()

    def full_weight(self) -> torch.Tensor:
        """All class centers, (C, D), on every rank (a collective with several ranks)."""
        return self.gather_rows(self.weight)

    @torch.no_grad()
    def load_full_weight(self, full: torch.Tensor) -> None:
        """Copy this rank's rows of a full (C, D) center matrix into ``weight``."""
        if full.shape != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"full weight must have shape ({self.num_classes}, {self.embedding_size}), got {tuple(full.shape)}"
            )
        self.weight.copy_(full[self.class_start : self.class_end])
