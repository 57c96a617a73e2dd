"""The training head and its world-size-independent state (for checkpoints that reshard).

Every head is built through the registry (``create_head``): one process with ``sample_rate == 1``
gets the preset's single-device head (MarginHead, SoftmaxHead, sub-centers, intra/inter/triplet
terms); several processes, or class sampling, get the model-parallel PartialFCHead with the same
margins. Either way a checkpoint stores the *full* (C, D) class centers and the full optimizer rows,
so a run can resume with a different number of processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..heads import create_head
from ..heads.partial_fc import PartialFCHead
from .checkpoint import CheckpointError, load_checkpoint_or_run
from .config import HeadConfig

__all__ = ["build_training_head", "head_full_state", "load_head_full_state", "optimizer_full_state", "load_optimizer_full_state"]


def _margins(config: HeadConfig) -> dict:
    return {key: getattr(config, key) for key in ("scale", "m1", "m2", "m3") if getattr(config, key) is not None}


def build_training_head(config: HeadConfig, num_classes: int, embedding_size: int, rank: int, world_size: int, seed: int) -> nn.Module:
    """The head for this process, its centers drawn from ``seed`` (identical for every world size)."""
    kwargs = dict(config.options)
    if config.name != "softmax":
        kwargs.update(_margins(config))
        kwargs["cosine_precision"] = config.cosine_precision
        if config.sub_centers is not None:
            kwargs["sub_centers"] = config.sub_centers
    if world_size > 1 or config.sample_rate < 1.0:
        kwargs.update(rank=rank, world_size=world_size, sample_rate=config.sample_rate)
    head = create_head(config.name, num_classes=num_classes, embedding_size=embedding_size, seed=seed, **kwargs)
    if config.init_from:
        load_head_full_state(head, {**head_full_state(head), "weight": initial_centers(config.init_from, head_rows(head, num_classes), embedding_size)})
    return head


def initial_centers(path: str, rows: int, embedding_size: int) -> torch.Tensor:
    """(rows, D) class centers to start from: a file holding ``{"weight": tensor}`` (``arcface clean``'s
    dominant_centers.pt), or a training checkpoint or run folder (its head's centers: fine-tuning)."""
    if Path(path).is_dir():
        try:
            state = load_checkpoint_or_run(path)[1]
        except CheckpointError as error:
            raise ValueError(f"head.init_from: {error}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"head.init_from: {path} not found") from None
        except Exception as error:
            raise ValueError(f"head.init_from: cannot read {path} ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and "weight" not in state and isinstance(state.get("head"), dict):
        state = state["head"]  # a training checkpoint
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (rows, embedding_size):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise ValueError(f"head.init_from: {path} must hold weight of shape ({rows}, {embedding_size}) for this head, found {shape}")
    return weight.float()


def head_rows(head: nn.Module, num_classes: int) -> int:
    return num_classes * getattr(head, "sub_centers", 1)


def head_full_state(head: nn.Module) -> dict:
    """The head's parameters with the class centers gathered over all processes (call on every rank)."""
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    if isinstance(head, PartialFCHead):
        state["weight"] = head.full_weight().detach().cpu()
    return state


def load_head_full_state(head: nn.Module, state: dict) -> None:
    if isinstance(head, PartialFCHead):
        head.load_full_weight(state["weight"])
        rest = {k: v for k, v in state.items() if k != "weight"}
        if rest:
            head.load_state_dict({**head.state_dict(), **rest})
        return
    head.load_state_dict(state)


def _weight_index(optimizer: torch.optim.Optimizer, head: nn.Module) -> int | None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        if param is head.weight:
            return index
    return None


def optimizer_full_state(optimizer: torch.optim.Optimizer, head: nn.Module) -> dict:
    """The head optimizer's state_dict with per-row state (momentum, Adam moments) gathered."""
    state = optimizer.state_dict()
    index = _weight_index(optimizer, head)
    if isinstance(head, PartialFCHead) and index is not None and index in state["state"]:
        state["state"][index] = {
            key: head.gather_rows(value) if torch.is_tensor(value) and value.shape == head.weight.shape else value
            for key, value in state["state"][index].items()
        }
    return state


def load_optimizer_full_state(optimizer: torch.optim.Optimizer, head: nn.Module, state: dict) -> None:
    index = _weight_index(optimizer, head)
    if isinstance(head, PartialFCHead) and index is not None and index in state["state"]:
        rows = head.num_classes
        state["state"][index] = {
            key: head.shard_rows(value) if torch.is_tensor(value) and value.dim() == 2 and value.shape[0] == rows else value
            for key, value in state["state"][index].items()
        }
    optimizer.load_state_dict(state)
