"""Class-center initialization that does not depend on how the centers are split across processes."""

from __future__ import annotations

import torch

__all__ = ["seeded_normal_rows", "INIT_CHUNK_ROWS", "DEFAULT_INIT_STD"]

INIT_CHUNK_ROWS = 4096
# Standard deviation of the class centers' normal initialization, for every head.
DEFAULT_INIT_STD = 0.01


def seeded_normal_rows(seed: int, start: int, end: int, dim: int, std: float = DEFAULT_INIT_STD) -> torch.Tensor:
    """Rows [start, end) of a virtual (C, dim) N(0, std^2) matrix, in float32.

    Rows are drawn in blocks of ``INIT_CHUNK_ROWS``, block b from a generator seeded with (seed, b),
    so any shard is computed alone, in memory proportional to the shard, and equals the same rows of
    the whole matrix: a head split over N processes starts exactly where a single process starts.
    """
    out = torch.empty(max(0, end - start), dim)
    first_block, last_block = start // INIT_CHUNK_ROWS, (end - 1) // INIT_CHUNK_ROWS
    for block in range(first_block, last_block + 1 if end > start else first_block):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        rows = torch.empty(INIT_CHUNK_ROWS, dim).normal_(0.0, std, generator=generator)
        block_start = block * INIT_CHUNK_ROWS
        low, high = max(start, block_start), min(end, block_start + INIT_CHUNK_ROWS)
        out[low - start : high - start] = rows[low - block_start : high - block_start]
    return out
