"""Deterministic, resumable data order: the same samples and flips whatever the process count.

Each epoch is a permutation of the dataset drawn from (seed, epoch), cut into global batches of
``batch_size * world_size``; rank r takes its contiguous part of each global batch. The horizontal
flip of each position is drawn from the same generator, so it belongs to the sample's place in the
epoch, not to a worker's RNG. With augmentation the index also encodes the epoch, and each sample's
augmentation is drawn from a generator seeded by (seed, encoded index). A resumed run (even with another number of processes, same global
batch) therefore sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from ..data.augment import AugmentConfig, augment_face

__all__ = ["EpochSampler", "FlipEncodedDataset"]


class FlipEncodedDataset(Dataset):
    """Index ``i + flip * n + epoch * 2n``: sample ``i``, horizontally flipped when ``flip`` is 1.

    Args:
        dataset: items ``(image (3, H, W) float, label)``.
        augment: further augmentation; its random numbers come from a generator seeded with
            (``seed``, index), so they depend on the sample's place in the run only.
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, augment: AugmentConfig | None = None, seed: int = 0):
        self.dataset = dataset
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, index: int):
        size = len(self.dataset)
        image, label = self.dataset[index % size]
        if (index // size) % 2:
            image = image.flip(-1)
        if self.augment is not None:
            generator = torch.Generator().manual_seed((self.seed * 0x9E3779B97F4A7C15 + index) % 2**63)
            image = augment_face(image, self.augment, generator)
        return image, label


class EpochSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of (flip-encoded) indices for one epoch, from a position.

    Args:
        num_samples: dataset size n.
        batch_size: per-process batch size B.
        rank, world_size: this process and the number of processes.
        seed: base seed; the epoch's order depends on (seed, epoch) only.
        flip: draw random flips (else every index is unflipped).
        encode_epoch: add ``epoch * 2 * num_samples`` to each index, so that per-sample augmentation
            drawn from the index differs between epochs.
    """

    def __init__(
        self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, flip: bool = True,
        encode_epoch: bool = False,
    ):
        self.num_samples, self.batch_size, self.encode_epoch = num_samples, batch_size, encode_epoch
        self.rank, self.world_size, self.seed, self.flip = rank, world_size, seed, flip
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch  # the incomplete last batch is dropped

    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at micro-batch ``batch`` of ``epoch``."""
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        if self.flip:
            order = order + torch.randint(0, 2, (self.num_samples,), generator=generator) * self.num_samples
        if self.encode_epoch:
            order = order + self.epoch * 2 * self.num_samples
        for batch in range(self.start_batch, self.batches_per_epoch()):
            start = batch * self.global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
