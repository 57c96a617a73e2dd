"""A tiny backbone without BatchNorm for training tests, and ``arcface`` with it registered.

BatchNorm normalizes over each process's own images, so a real backbone trained by 2 processes of
8 images differs from 1 process of 16 (and a resume that changes the number of processes differs
from a straight run). This backbone has no batch-dependent layer: its gradient of the global mean
loss is the same whatever the process layout, so the trainer's distributed numbers can be compared
with a single process to rounding. It is small enough to train to a low loss in seconds.

Run as a script (``python -m torch.distributed.run ... tests/train_helpers.py [--float64] train ...``)
it is the ``arcface`` command line with the backbone registered (``--float64``: the default dtype is
float64, as in :func:`default_dtype`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn as nn

from arcface.backbones import list_backbones, register_backbone
from arcface.train.checkpoint import list_checkpoints, load_checkpoint
from arcface.train.config import load_config
from arcface.train.distributed import DistributedContext

TINY_BACKBONE = "tiny_no_bn"


class TinyNoBN(nn.Module):
    """(B, 3, 112, 112) -> (B, embedding_size): 8x8 average pooling, one convolution, PReLU, linear."""

    def __init__(self, embedding_size: int = 32, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AvgPool2d(8)  # 112 -> 14
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * 14 * 14, embedding_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(self.pool(images)))
        return self.fc(self.dropout(x.flatten(1)))


def register() -> None:
    """Register :class:`TinyNoBN` as ``tiny_no_bn`` (once per process)."""
    if TINY_BACKBONE not in list_backbones():
        register_backbone(TINY_BACKBONE)(lambda embedding_size=32, dropout=0.0: TinyNoBN(embedding_size, dropout))


def _is_parameter(key: str) -> bool:
    # BatchNorm running statistics are buffers, not what the optimizer moves; training-mode forward
    # passes do not read them (and DDP copies rank 0's to the other ranks).
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def final_parameters(run: Path) -> dict[str, torch.Tensor]:
    """The newest checkpoint's parameters: ``backbone.*`` and the full (C, D) ``head.weight``."""
    state = load_checkpoint(list_checkpoints(run)[0])
    weights = {f"backbone.{k}": v for k, v in state["backbone"].items() if _is_parameter(k)}
    weights["head.weight"] = state["head"]["weight"]
    return weights


def initial_parameters(config: str, settings: list[str], run_dir: Path) -> dict[str, torch.Tensor]:
    """The parameters a run of ``config`` with ``--set settings`` starts from (the trainer builds them
    from the seed alone, the same for every number of processes), in the current default dtype."""
    from arcface.train.loop import _Run

    run = _Run(load_config(config, settings), run_dir, DistributedContext(), False, False, [])
    weights = {f"backbone.{k}": v.detach().clone() for k, v in run.backbone.state_dict().items() if _is_parameter(k)}
    weights["head.weight"] = run.head.weight.detach().clone()
    return weights


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build and train in ``dtype`` inside the block (float64: the synthetic images, the models and
    the centers are created in the default dtype), then restore the previous default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


if __name__ == "__main__":
    register()
    from arcface.cli import main

    arguments = sys.argv[1:]
    if arguments[:1] == ["--float64"]:
        torch.set_default_dtype(torch.float64)
        arguments = arguments[1:]
    sys.exit(main(arguments))
