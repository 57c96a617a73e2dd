"""Pieces shared by the backbones: the input contract and the float32 embedding layer."""

from __future__ import annotations

from typing import Callable

import torch

from ..input_spec import FACE_SIZE

__all__ = ["INPUT_SIZE", "check_face_batch", "run_full_precision"]

# Every backbone here ends in a layer sized for a 7x7 map: the input is the 112x112 aligned crop.
INPUT_SIZE = FACE_SIZE


def check_face_batch(x: torch.Tensor) -> None:
    """Raise ValueError unless x is a (B, 3, 112, 112) floating batch of aligned faces."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of aligned faces, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != INPUT_SIZE or x.shape[3] != INPUT_SIZE:
        raise ValueError(
            f"expected a batch of aligned RGB faces of shape (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), "
            f"got {tuple(x.shape)}; align and resize faces to the 112x112 ArcFace template first"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input (normalized pixels), got {x.dtype}")


def run_full_precision(layers: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``layers(x)`` outside autocast, with x cast to ``dtype`` (the layers' parameter dtype).

    The embedding layers (FC + BN) cost ~1% of a backbone's FLOPs; running them in full precision
    keeps the embedding precise when the convolutions run in bf16/fp16.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layers(x.to(dtype))
