"""Loading insightface ``arcface_torch`` checkpoints.

Our modules use insightface's attribute names, so its state_dicts load as they are; this converter
only handles what differs between how people save them: the model names (``r50``, ``mbf``), the
``module.`` prefix of a DDP-wrapped model, and a checkpoint dict that wraps the state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .registry import create_backbone, list_backbones

__all__ = ["INSIGHTFACE_NAMES", "from_insightface"]

# insightface get_model() name -> ours.
INSIGHTFACE_NAMES = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "r200": "iresnet200",
    "mbf": "mobilefacenet",
}

_WRAPPER_KEYS = ("state_dict", "model", "backbone")


def _unwrap(checkpoint: Mapping) -> Mapping[str, torch.Tensor]:
    for key in _WRAPPER_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def from_insightface(name: str, state_dict: Mapping, embedding_size: int | None = None, **kwargs) -> nn.Module:
    """Build our backbone and load an insightface ``arcface_torch`` state_dict into it, strictly.

    Args:
        name: insightface's name (``r50``, ``mbf``, ...) or ours (``iresnet50``, ...).
        state_dict: what ``torch.save(backbone.state_dict())`` wrote in arcface_torch (a
            ``module.``-prefixed DDP state_dict or a dict wrapping it is accepted too).
        embedding_size: defaults to the size found in the checkpoint.
        kwargs: further ``create_backbone`` arguments (dropout, activation_checkpointing).

    Returns:
        The backbone in eval mode, with every weight loaded (``strict=True``).

    Raises:
        ValueError: unknown name, or keys/shapes that do not match (missing and unexpected keys listed).
    """
    ours = INSIGHTFACE_NAMES.get(name, name)
    if ours not in list_backbones():
        raise ValueError(f"unknown backbone {name!r}; insightface names: {', '.join(INSIGHTFACE_NAMES)}")
    state = {key.removeprefix("module."): value for key, value in _unwrap(state_dict).items()}
    if embedding_size is None:
        embedding_size = int(state["features.running_mean"].shape[0]) if "features.running_mean" in state else (
            int(state["features.layers.3.running_mean"].shape[0]) if "features.layers.3.running_mean" in state else 512
        )
    model = create_backbone(ours, embedding_size=embedding_size, **kwargs)
    expected = model.state_dict().keys()
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match {ours} (insightface {name!r}): "
            f"{len(missing)} missing keys {_preview(missing)}, {len(unexpected)} unexpected keys {_preview(unexpected)}; "
            f"is it a checkpoint of another depth?"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"checkpoint does not match {ours} (insightface {name!r}): {error}") from error
    return model.eval()


def _preview(keys: list[str], shown: int = 3) -> str:
    return "[" + ", ".join(keys[:shown]) + (", ...]" if len(keys) > shown else "]")
