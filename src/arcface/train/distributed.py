"""The process layout of a run: one process (no process group at all) or ``torchrun`` ranks.

Everything else takes ``rank`` and ``world_size`` from here as plain arguments.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext"]

log = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> "DistributedContext":
        """Single process unless torchrun set WORLD_SIZE > 1; then join the group (gloo on CPU, NCCL on GPU).

        A single process never touches torch.distributed, so a laptop CPU or one GPU needs no NCCL.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device=cuda but no CUDA device is available; use device=cpu or auto")
        if use_cuda:
            torch.cuda.set_device(local_rank)
            target = torch.device("cuda", local_rank)
        else:
            target = torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
            log.info("rank %d of %d joined the %s process group", rank, world_size, backend)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=target)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, value):
        """rank 0's value on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_reduce_max(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
