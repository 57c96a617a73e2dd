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

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .base import check_embeddings, check_head_sizes, check_labels, compute_dtype
from .cosine import scaled_cosine
from .init import seeded_normal_rows
from .margin import check_margins, margined_target
from .margin_head import EMBEDDING_NORM_EPS

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


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits whose columns are split over ranks.

    forward(logits (M, n_local), target_col (M,), world_size, group) -> scalar, where ``target_col``
    is the column of each sample's target among this rank's columns, -1 when another rank holds it.
    Equal to ``F.cross_entropy`` on the (M, C) logits concatenated over ranks.
    """

    @staticmethod
    def forward(ctx, logits, target_col, world_size, group):
        distributed = world_size > 1
        # The row max only shifts the exponentials for stability: it carries no gradient.
        row_max = logits.amax(dim=1)
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max.unsqueeze(1)
        rows = (target_col >= 0).nonzero().squeeze(1)
        cols = target_col[rows]
        # Column 0: sum of exp over this rank's classes; column 1: the shifted target logit, which
        # lives on exactly one rank (0 elsewhere). One all-reduce (SUM) completes both.
        stats = logits.new_zeros(logits.shape[0], 2)
        stats[rows, 1] = shifted[rows, cols]
        probs = shifted.exp_()
        stats[:, 0] = probs.sum(dim=1)
        if distributed:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        sum_exp, target = stats.unbind(1)
        loss = (sum_exp.log() - target).mean()
        probs.div_(sum_exp.unsqueeze(1))  # this rank's columns of the global softmax
        ctx.save_for_backward(probs, rows, cols)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        probs, rows, cols = ctx.saved_tensors
        # d(mean CE)/d(logits) = (softmax - onehot) / M; both factors are local: no collective.
        # A copy, not the saved softmax in place, so retain_graph / gradcheck see the graph intact.
        # It costs no peak memory: scaled_cosine's backward holds two (M, n) buffers right after.
        grad = probs.clone()
        grad[rows, cols] -= 1.0
        grad.mul_(grad_output / probs.shape[0])
        return grad, None, None, None


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
            margins (defaults: ArcFace, m2 = 0.5).
        pi_region: what happens where ``m1*theta + m2`` passes pi, see :mod:`arcface.heads.margin`.
        straight_through: apply the margin as a constant in backward, as in ``MarginHead``.
        init_std: standard deviation of the normal initialization of the centers.
        process_group: the group of the ``world_size`` ranks (None: the default group).
        seed: seeds the initialization (the full (C, D) matrix is drawn and this rank keeps its rows,
            so the shards of any world size concatenate to the single-process weight) and the
            center sampler (``seed + rank``).
        sub_centers: not supported; any value but 1 raises.

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
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        pi_region: str = "fallback",
        straight_through: bool = False,
        init_std: float = 0.01,
        process_group: dist.ProcessGroup | None = None,
        seed: int = 0,
        sub_centers: int = 1,
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
        }

    def extra_repr(self) -> str:
        layout = f"rank={self.rank}, world_size={self.world_size}, classes=[{self.class_start}, {self.class_end})"
        return layout + ", " + ", ".join(f"{key}={value}" for key, value in self.hparams().items())

    # ----------------------------------------------------------------------------- sampler state
    def sampler_state(self) -> torch.Tensor:
        """The center sampler's generator state (a uint8 CPU tensor), for checkpoints."""
        return self._sampler.get_state()

    def load_sampler_state(self, state: torch.Tensor) -> None:
        """Restore a state from :meth:`sampler_state` (of the same rank, to replay the same draws)."""
        self._sampler.set_state(state.detach().to("cpu", torch.uint8))

    def sample_centers(self, labels: torch.Tensor) -> torch.Tensor:
        """Rows of this rank's shard that enter the logits this step; draws from the sampler.

        Args:
            labels: (N*B,) labels of the whole global batch.

        Returns:
            (num_sample,) sorted long indices into ``weight``: every class of the shard present in
            ``labels``, plus uniformly random others, ``max(positives, int(sample_rate * num_local))``
            in all (at least one, so that no rank ends up with an empty softmax share).
        """
        in_shard = (labels >= self.class_start) & (labels < self.class_end)
        positives = torch.unique(labels[in_shard] - self.class_start).cpu()
        num_sample = max(positives.numel(), int(self.sample_rate * self.num_local), 1)
        num_sample = min(num_sample, self.num_local)
        # One uniform score per row; positives score 2, above any draw, so top-k always keeps them.
        # The draw does not depend on the labels, so the generator advances the same way every step.
        scores = torch.rand(self.num_local, generator=self._sampler)
        scores[positives] = 2.0
        index = torch.topk(scores, num_sample, sorted=False).indices.sort().values
        return index.to(self.weight.device)

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
    def _margined_logits(
        self, x_unit: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, n) margined logits against ``weight`` and each sample's target column (-1: elsewhere)."""
        target_col = torch.full_like(labels, -1)
        rows = ((labels >= self.class_start) & (labels < self.class_end)).nonzero().squeeze(1)
        shard_row = labels[rows] - self.class_start
        if index is None:
            target_col[rows] = shard_row
        else:
            position = torch.full((self.num_local,), -1, dtype=torch.long, device=labels.device)
            position[index] = torch.arange(index.numel(), device=labels.device)
            target_col[rows] = position[shard_row]
        # Samples whose class is on another rank gather a dummy column 0; only `rows` are used.
        scaled, target_cos = scaled_cosine(x_unit, weight, self.scale, target_col.clamp_min(0).unsqueeze(1))
        cos_target = target_cos.squeeze(1)[rows]
        margined = margined_target(cos_target, self.m1, self.m2, self.m3, self.pi_region)
        if self.straight_through:
            margined = cos_target + (margined - cos_target).detach()
        # The margin as a delta on the target logit, as MarginHead does: the logits' gradient passes
        # through the accumulation unchanged.
        delta = ((margined - cos_target) * self.scale).to(scaled.dtype)
        scaled.index_put_((rows, target_col[rows]), delta, accumulate=True)
        return scaled, target_col

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        """Mean margined cross-entropy over the global batch (all ranks' samples).

        Args:
            local_embeddings: (B, D), this rank's samples, any norm and float dtype (the cosines are
                computed in float32, or float64 for float64 inputs, even under autocast).
            local_labels: (B,) global class indices in [0, C). B must be the same on every rank.

        Returns:
            Scalar loss, the same value on every rank; exactly 0 (attached) for an empty batch.
        """
        labels = self._check_inputs(local_embeddings, local_labels)
        if labels.numel() == 0:  # every rank agreed on B = 0
            return self.weight.sum() * 0.0 + local_embeddings.sum() * 0.0
        with torch.autocast(device_type=local_embeddings.device.type, enabled=False):
            dtype = compute_dtype(local_embeddings, self.weight)
            embeddings = local_embeddings.to(dtype)
            if self.world_size > 1:
                embeddings = _AllGatherRows.apply(embeddings, self.rank, self.world_size, self.process_group)
                labels = self._gather_labels(labels)
            x_unit = F.normalize(embeddings, dim=1, eps=EMBEDDING_NORM_EPS)
            index = None
            weight = self.weight
            if self.sample_rate < 1.0:
                index = self.sample_centers(labels)
                weight = weight[index]  # the gradient flows back to the sampled rows only
            logits, target_col = self._margined_logits(x_unit, labels, weight.to(dtype), index)
            return _DistributedCrossEntropy.apply(logits, target_col, self.world_size, self.process_group)

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
