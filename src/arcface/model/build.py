"""A trained model rebuilt from its checkpoint: backbone and head through the registries.

>>> model = load_trained_model("runs/r50", need_head=True)
>>> model.backbone(faces)                 # faces (B, 3, 112, 112) in model.input_spec -> (B, D)
>>> model.head.class_subcenter_cosines(embeddings, labels)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..backbones import create_backbone
from ..heads import create_head
from ..input_spec import InputSpec
from .checkpoint_file import CheckpointError, checkpoint_input_spec, load_checkpoint_or_run

__all__ = ["TrainedModel", "load_trained_model", "backbone_from_state", "head_from_state"]

_MARGINS = ("scale", "m1", "m2", "m3")


@dataclass
class TrainedModel:
    """What a training checkpoint holds, rebuilt: the backbone (eval mode, CPU), the head or None, the raw state."""

    path: Path
    backbone: nn.Module
    head: nn.Module | None
    input_spec: InputSpec
    state: dict

    @property
    def embedding_size(self) -> int:
        return int(self.state["config"]["model"]["embedding_size"])

    @property
    def num_classes(self) -> int:
        return int(self.state.get("num_classes") or 0)


def backbone_from_state(state: dict, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """The checkpoint's backbone, built by name from its config, weights loaded (strict), in eval mode."""
    model_config = state["config"]["model"]
    backbone = create_backbone(model_config["backbone"], embedding_size=model_config["embedding_size"])
    try:
        backbone.load_state_dict(state["backbone"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the checkpoint's backbone weights do not fit its own config: {error}") from None
    return backbone.eval()


def head_from_state(state: dict, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """The checkpoint's classification head in one process: all class centers (and sub-centers), by name.

    A head trained model-parallel (partial FC) is saved with its centers gathered, so it comes back as the
    single-process head of the same preset and margins.
    """
    head_state = state.get("head") if isinstance(state.get("head"), dict) else {}
    num_classes = int(state.get("num_classes") or 0)
    if "weight" not in head_state or num_classes <= 0:
        raise CheckpointError(f"{path}: no classification head in the checkpoint")
    config = state["config"].get("head", {})
    name = config.get("name", "arcface")
    kwargs = dict(config.get("options") or {})
    weight = head_state["weight"]
    if name != "softmax":
        kwargs.update({key: config[key] for key in _MARGINS if config.get(key) is not None})
        if config.get("sub_centers") is not None:
            kwargs["sub_centers"] = config["sub_centers"]
        elif weight.shape[0] != num_classes and weight.shape[0] % num_classes == 0:
            kwargs["sub_centers"] = weight.shape[0] // num_classes  # the preset's K was overridden through options
    embedding_size = int(state["config"]["model"]["embedding_size"])
    head = create_head(name, num_classes=num_classes, embedding_size=embedding_size, **kwargs)
    if tuple(weight.shape) != tuple(head.weight.shape):
        raise CheckpointError(f"{path}: head weight {tuple(weight.shape)} does not fit the config's head {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(weight)
        if "bias" in head_state and getattr(head, "bias", None) is not None:
            head.bias.copy_(head_state["bias"])
    return head.eval()


def load_trained_model(path: str | os.PathLike, need_head: bool = False) -> TrainedModel:
    """A training checkpoint, or the newest of a run folder, rebuilt.

    Args:
        need_head: also rebuild the head (CheckpointError when the checkpoint has none); None otherwise.
    """
    checkpoint, state = load_checkpoint_or_run(path)
    backbone = backbone_from_state(state, checkpoint)
    head = head_from_state(state, checkpoint) if need_head else None
    return TrainedModel(checkpoint, backbone, head, checkpoint_input_spec(state), state)
