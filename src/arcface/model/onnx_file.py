"""ONNX face model files: run one behind its input spec (onnxruntime), read and write its ``arcface.*`` metadata.

Our exports write the input spec into the file's ``metadata_props`` (``arcface.input_size``,
``arcface.input_mean``, ``arcface.input_std``, ``arcface.channel_order``, ``arcface.layout``), so
``arcface eval model.onnx`` needs no ``--input-*`` flags. A publisher's file without those keys is fed
with the flags given (default: our convention).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.errors import DataError
from ..input_spec import InputSpec

__all__ = ["OnnxFaceModel", "onnx_session", "read_onnx_metadata", "append_onnx_metadata", "require_onnxruntime"]

logger = logging.getLogger(__name__)


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("ONNX models need onnxruntime: pip install onnxruntime (or 'arcface[onnx]')") from error
    return onnxruntime


def onnx_session(path: str | os.PathLike, threads: int = 0, providers: list[str] | None = None):
    """An onnxruntime InferenceSession (CUDA provider first when available); DataError for a bad file."""
    onnxruntime = require_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... for a bad file
        raise DataError(f"{path}: onnxruntime cannot load this model ({type(error).__name__}: {error})") from None


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's ``metadata_props`` as a dict (empty when it has none)."""
    return dict(onnx_session(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def append_onnx_metadata(path: str | os.PathLike, props: dict[str, str]) -> None:
    """Add ``metadata_props`` entries to an ONNX file in place, without the ``onnx`` package.

    A serialized protobuf message followed by more fields parses as the merged message, so each entry is
    appended as one ``ModelProto.metadata_props`` (field 14) ``StringStringEntryProto`` (key 1, value 2).
    """
    blob = b"".join(
        _length_delimited(14, _length_delimited(1, key.encode()) + _length_delimited(2, value.encode()))
        for key, value in props.items()
    )
    with open(path, "ab") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())


class OnnxFaceModel(nn.Module):
    """An ONNX face model; runs with onnxruntime (CPU or CUDA provider).

    Args:
        path: the .onnx file; its input must take ``spec.size`` square faces (the batch dimension may be
            fixed or symbolic; a fixed batch is served by splitting and padding).
        spec: how the model wants its input; ``spec.layout`` "NCHW"/"NHWC", or None to read the layout
            from the input's shape.
        threads: onnxruntime intra-op threads (0: its default).

    ``forward``: (B, 3, S, S) float, already normalized by ``spec.normalize`` (channel order included)
    -> (B, D) float32 embeddings (not normalized). Only the layout is applied here.
    """

    def __init__(self, path: str | os.PathLike, spec: InputSpec, detect_layout: bool = True, threads: int = 0):
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{self.path}: expected a model with one input (the face batch), it has {len(inputs)}")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise DataError(f"{self.path}: the model's input {self.input_name!r} has shape {shape}; expected a 4-D image batch")
        layout = _layout(self.path, shape) if detect_layout else spec.layout
        self.spec = InputSpec(spec.size, spec.mean, spec.std, spec.channel_order, layout)
        spatial = shape[2:] if layout == "NCHW" else shape[1:3]
        channels = shape[1] if layout == "NCHW" else shape[3]
        fixed = [d for d in spatial if isinstance(d, int)]
        if any(d != spec.size for d in fixed) or (isinstance(channels, int) and channels != 3):
            raise DataError(
                f"{self.path}: the model takes {layout} input of shape {shape}, but this evaluation feeds 3x{spec.size}x{spec.size} "
                f"aligned faces; check --input-layout, or use a {spec.size}x{spec.size} face model"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self._dummy = nn.Parameter(torch.zeros(0), requires_grad=False)  # so embed_images sees a device

    @property
    def input_layout(self) -> str:
        return self.spec.layout.lower()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.detach().float().cpu().numpy()
        if self.spec.layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = [self._run(chunk) for chunk in self._chunks(batch)]
        return torch.from_numpy(np.concatenate(outputs)[: len(batch)]).to(images.device)

    def _chunks(self, batch: np.ndarray):
        if self.fixed_batch is None:
            yield batch
            return
        size = self.fixed_batch
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            if len(chunk) < size:  # pad a short last chunk; its extra rows are dropped in forward
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            yield chunk

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        output = self.session.run(None, {self.input_name: chunk})[0]
        return np.asarray(output, dtype=np.float32).reshape(len(chunk), -1)

    def embedding_size(self) -> int:
        return int(self(torch.zeros(1, 3, self.spec.size, self.spec.size)).shape[1])


def _layout(path: Path, shape: list) -> str:
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    if shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    raise DataError(f"{path}: cannot tell the layout of input shape {shape}; pass --input-layout nchw or nhwc")
