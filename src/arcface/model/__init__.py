"""A trained model as a file: checkpoints, ONNX files and the input spec they carry.

This layer sits above backbones and heads and below evaluation, training and everything that uses a
model: it reads a checkpoint or run folder (``weights_only``), rebuilds the backbone and head through
the registries, runs ONNX face models behind their input spec, and writes files atomically.

>>> from arcface.model import load_face_model, load_trained_model
>>> model, info = load_face_model("runs/r50")           # any face model: checkpoint, .pth, .onnx
>>> trained = load_trained_model("runs/r50", need_head=True)
"""

from .build import TrainedModel, backbone_from_state, head_from_state, load_trained_model
from .checkpoint_file import (
    CHECKPOINT_DIR,
    CheckpointError,
    atomic_torch_save,
    checkpoint_input_spec,
    list_checkpoints,
    load_checkpoint,
    load_checkpoint_or_run,
)
from .face_model import ModelInfo, SpecAdapter, file_fingerprint, load_face_model, load_named_model
from .onnx_file import OnnxFaceModel, append_onnx_metadata, onnx_session, read_onnx_metadata

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "ModelInfo",
    "OnnxFaceModel",
    "SpecAdapter",
    "TrainedModel",
    "append_onnx_metadata",
    "atomic_torch_save",
    "backbone_from_state",
    "checkpoint_input_spec",
    "file_fingerprint",
    "head_from_state",
    "list_checkpoints",
    "load_checkpoint",
    "load_checkpoint_or_run",
    "load_face_model",
    "load_named_model",
    "load_trained_model",
    "onnx_session",
    "read_onnx_metadata",
]
