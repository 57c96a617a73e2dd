"""Learning-rate factor: linear warmup then polynomial decay to 0, as insightface's PolyScheduler.

Progress is the fraction of training done: optimizer steps over the total, or elapsed training time
over the time budget (throughput on a shared CPU drifts by +-25%, so a time budget gives a decay
that ends when training ends).
"""

from __future__ import annotations

__all__ = ["lr_factor"]


def lr_factor(progress: float, warmup_fraction: float = 0.0, power: float = 2.0) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return progress / warmup_fraction
    remaining = (1.0 - progress) / (1.0 - warmup_fraction) if warmup_fraction < 1 else 0.0
    return remaining**power
