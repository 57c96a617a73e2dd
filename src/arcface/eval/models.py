"""Face models to evaluate: our training checkpoints, insightface ``.pth`` backbones, any ONNX face model.

Every model is returned as an ``nn.Module`` with our input convention, ``(B, 3, 112, 112)`` RGB
float in [-1, 1] (``(x - 127.5) / 127.5``), so :func:`arcface.eval.embed_images` runs them all. An
ONNX model with another convention (``(x - 127.5) / 128``, BGR, NHWC, as insightface's model zoo and
most mobile models use) is wrapped by :class:`OnnxFaceModel`, which converts each batch back to
pixels and then to what the model expects.

>>> model, info = load_face_model("mobilefacenet.onnx", input_mean=127.5, input_std=128.0)
>>> info.describe()
'ONNX mobilefacenet.onnx (input NCHW RGB, (x - 127.5) / 128.0, 192-D)'
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones import create_backbone, from_insightface
from ..data.errors import DataError

__all__ = ["ModelInfo", "OnnxFaceModel", "load_face_model", "file_fingerprint"]

logger = logging.getLogger(__name__)

IMAGE_SIZE = 112
OUR_MEAN, OUR_STD = 127.5, 127.5  # what FaceTransform produces: (x / 255 - 0.5) / 0.5


@dataclass(frozen=True)
class ModelInfo:
    """What was evaluated, for the report and the embedding cache key."""

    path: str
    kind: str  # checkpoint | insightface | onnx
    architecture: str
    embedding_size: int
    input_mean: float = OUR_MEAN
    input_std: float = OUR_STD
    input_layout: str = "nchw"
    bgr: bool = False
    fingerprint: str = ""

    def describe(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        return (f"{self.kind} {Path(self.path).name} ({self.architecture}; input {self.input_layout.upper()} {order}, "
                f"(x - {self.input_mean:g}) / {self.input_std:g}, {self.embedding_size}-D)")

    def to_dict(self) -> dict:
        return asdict(self)


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the file's first and last MiB plus its size: cheap, and changes when the weights do."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read())
    return digest.hexdigest()[:16]


class OnnxFaceModel(nn.Module):
    """An ONNX face model behind our input convention; runs with onnxruntime (CPU or CUDA provider).

    Args:
        path: the .onnx file; its input must take 112x112 faces (the batch dimension may be fixed or
            symbolic; a fixed batch is served by splitting and padding).
        input_mean, input_std: the model's normalization, ``(x - mean) / std`` of 0..255 pixels.
        input_layout: "nchw", "nhwc" or "auto" (from the input's shape).
        bgr: the model expects BGR channel order.
        threads: onnxruntime intra-op threads (0: its default).

    ``forward``: (B, 3, 112, 112) float RGB in [-1, 1] -> (B, D) float32 embeddings (not normalized).
    """

    def __init__(self, path: str | os.PathLike, input_mean: float = OUR_MEAN, input_std: float = OUR_STD,
                 input_layout: str = "auto", bgr: bool = False, threads: int = 0):
        super().__init__()
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("ONNX models need onnxruntime: pip install onnxruntime (or 'arcface[onnx]')") from error
        if input_std <= 0:
            raise ValueError(f"input_std must be > 0, got {input_std}")
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... for a bad file
            raise DataError(f"{self.path}: onnxruntime cannot load this model ({type(error).__name__}: {error})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{self.path}: expected a model with one input (the face batch), it has {len(inputs)}")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise DataError(f"{self.path}: the model's input {self.input_name!r} has shape {shape}; expected a 4-D image batch")
        self.input_layout = _layout(self.path, shape, input_layout)
        spatial = shape[2:] if self.input_layout == "nchw" else shape[1:3]
        channels = shape[1] if self.input_layout == "nchw" else shape[3]
        fixed = [d for d in spatial if isinstance(d, int)]
        if any(d != IMAGE_SIZE for d in fixed) or (isinstance(channels, int) and channels != 3):
            raise DataError(
                f"{self.path}: the model takes {self.input_layout.upper()} input of shape {shape}, but this evaluation "
                f"feeds 3x{IMAGE_SIZE}x{IMAGE_SIZE} aligned faces; check --input-layout, or use a {IMAGE_SIZE}x{IMAGE_SIZE} face model"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_mean, self.input_std, self.bgr = float(input_mean), float(input_std), bool(bgr)
        self._dummy = nn.Parameter(torch.zeros(0), requires_grad=False)  # so embed_images sees a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.detach().float().cpu().numpy() * OUR_STD + OUR_MEAN  # back to 0..255 RGB
        batch = (pixels - self.input_mean) / self.input_std
        if self.bgr:
            batch = batch[:, ::-1]
        if self.input_layout == "nhwc":
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
        output = np.asarray(output, dtype=np.float32).reshape(len(chunk), -1)
        return output

    def embedding_size(self) -> int:
        return int(self(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).shape[1])


def _layout(path: Path, shape: list, requested: str) -> str:
    if requested not in ("auto", "nchw", "nhwc"):
        raise ValueError(f"input_layout must be auto, nchw or nhwc, got {requested!r}")
    if requested != "auto":
        return requested
    if shape[1] == 3 and shape[3] != 3:
        return "nchw"
    if shape[3] == 3 and shape[1] != 3:
        return "nhwc"
    raise DataError(f"{path}: cannot tell the layout of input shape {shape}; pass --input-layout nchw or nhwc")


def _load_torch_file(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        from ..train.checkpoint import load_refusal  # torch's message advises weights_only=False: never repeat that

        raise DataError(f"{path}: cannot read it as a PyTorch file ({type(error).__name__}: {load_refusal(error, 'unreadable')}); "
                        "truncated, not a model, or holding objects other than tensors (refused)") from None


def load_face_model(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    input_mean: float | None = None,
    input_std: float | None = None,
    input_layout: str = "auto",
    bgr: bool = False,
    threads: int = 0,
) -> tuple[nn.Module, ModelInfo]:
    """Load a face model for evaluation, in eval mode on the CPU.

    Args:
        path: one of
            - an arcface training checkpoint (``*.pt`` written by ``arcface train``): the backbone is
              rebuilt from the config stored in it;
            - a run folder: its newest checkpoint; a folder holding exactly one .onnx: that model;
            - an insightface ``arcface_torch`` backbone state_dict (``backbone.pth``): needs
              ``architecture`` (``r50``, ``r100``, ``mbf``, or our names);
            - an ``.onnx`` model: ``input_mean``/``input_std``/``input_layout``/``bgr`` describe its input.
        architecture: backbone name for an insightface state_dict.
        input_mean, input_std: for ONNX (default 127.5 / 127.5); must stay unset (or 127.5) otherwise.

    Returns:
        (model: (B, 3, 112, 112) [-1, 1] RGB -> (B, D), info).
    """
    path = Path(path)
    if path.is_dir():
        from ..train.checkpoint import list_checkpoints

        found = list_checkpoints(path)
        onnx_files = sorted(path.glob("*.onnx"))
        if found:
            path = found[0]
        elif len(onnx_files) == 1:  # a model folder as distributed: one .onnx beside its notes
            path = onnx_files[0]
        else:
            raise DataError(f"{path}: a folder without checkpoints or a single .onnx model; pass a checkpoint (.pt), "
                            "a backbone .pth or an .onnx file")
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    fingerprint = file_fingerprint(path)
    if path.suffix.lower() == ".onnx":
        mean = OUR_MEAN if input_mean is None else input_mean
        std = OUR_STD if input_std is None else input_std
        model = OnnxFaceModel(path, mean, std, input_layout, bgr, threads)
        info = ModelInfo(str(path), "onnx", path.stem, model.embedding_size(), mean, std, model.input_layout, bool(bgr), fingerprint)
        return model, info
    if (input_mean not in (None, OUR_MEAN)) or (input_std not in (None, OUR_STD)) or bgr or input_layout not in ("auto", "nchw"):
        raise ValueError("--input-mean/--input-std/--input-layout/--bgr describe ONNX models; PyTorch models here take our fixed input")
    state = _load_torch_file(path)
    if isinstance(state, dict) and "config" in state and "backbone" in state:
        model_config = state["config"]["model"]
        model = create_backbone(model_config["backbone"], embedding_size=model_config["embedding_size"])
        try:
            model.load_state_dict(state["backbone"])
        except RuntimeError as error:
            raise DataError(f"{path}: the checkpoint's weights do not fit its own config: {error}") from None
        info = ModelInfo(str(path), "checkpoint", model_config["backbone"], int(model_config["embedding_size"]), fingerprint=fingerprint)
        return model.eval(), info
    if architecture is None:
        raise DataError(f"{path}: not an arcface training checkpoint; for an insightface backbone .pth pass --arch (r50, r100, mbf, ...)")
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state_dict, found {type(state).__name__}")
    try:
        model = from_insightface(architecture, state)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None
    with torch.no_grad():
        size = int(model.eval()(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).shape[1])
    return model, ModelInfo(str(path), "insightface", architecture, size, fingerprint=fingerprint)
