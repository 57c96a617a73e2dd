"""ONNX export of a backbone with a parity check against PyTorch and an onnxruntime throughput figure.

The exported model keeps the backbone's input spec: ``input`` float32 (batch, 3, 112, 112), RGB,
``(x - 127.5) / 127.5`` for our models; output ``embeddings`` float32 (batch, D), not normalized. The spec
is written into the file's ``metadata_props`` (``arcface.input_size``, ``arcface.input_mean``,
``arcface.input_std``, ``arcface.channel_order``, ``arcface.layout``, plus ``arcface.embedding_size`` and
what the caller adds), so loading the file needs no input flags. The batch axis is
dynamic (insightface's exporter is reported to break with batch > 1): parity is checked at batch 1, 7
and 64 by default. ``simplify=True`` rewrites the graph with onnxruntime's *basic* optimizations
(constant folding, redundant-node elimination, Conv+BatchNorm-style fusions that every execution
provider supports) and saves the result as a plain ONNX file; the parity check then runs on that file.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..input_spec import DEFAULT_INPUT_SPEC, FACE_SIZE, InputSpec
from ..model.onnx_file import append_onnx_metadata, onnx_session, require_onnxruntime

__all__ = ["export_onnx", "simplify_onnx", "ExportError", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # read by every onnxruntime release since 1.11


class ExportError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def _session(path: Path):
    return onnx_session(path, providers=["CPUExecutionProvider"])


def _node_count(path: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def simplify_onnx(source: Path, target: Path) -> None:
    """Save ``source`` rewritten by onnxruntime's basic (provider-independent) graph optimizations."""
    onnxruntime = require_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    check_batches: tuple[int, ...] = (1, 7, 64),
    tolerance: float = 1e-4,
    seed: int = 0,
    simplify: bool = False,
    spec: InputSpec = DEFAULT_INPUT_SPEC,
    metadata: dict[str, str] | None = None,
) -> dict:
    """Export ``model`` (CPU, fp32, eval mode) to ``path`` and check it.

    Args:
        spec: the input spec the model was trained with; written into the file's metadata.
        metadata: further ``metadata_props`` (keys should start with ``arcface.``).

    The file is written beside ``path`` first and renamed only when every parity check passes, so a
    failed export never leaves a file that looks good.

    Returns:
        {"max_abs_diff": ..., "per_batch": {batch: diff}, "embedding_size": D, "ort_images_per_s": ...,
         "opset": opset, "bytes": size, "nodes": graph nodes (None without the onnx package),
         "nodes_before_simplify": (with ``simplify``)}.

    Raises:
        ExportError: a difference above ``tolerance`` (fp32), naming the batch size.
    """
    path = Path(path)
    model = model.cpu().float().eval()
    if spec.size != FACE_SIZE or spec.layout != "NCHW":
        raise ValueError(f"only NCHW {FACE_SIZE}x{FACE_SIZE} backbones are exported here, got {spec.describe()}")
    temporary = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, FACE_SIZE, FACE_SIZE)
    nodes_before = None
    try:  # from the first byte written: a failure (a full disk included) leaves no temporary file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks: they add no graph nodes
            torch.onnx.export(
                model, example, str(temporary), input_names=["input"], output_names=["embeddings"],
                dynamic_axes={"input": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=opset, dynamo=False,
            )
        if simplify:
            nodes_before = _node_count(temporary)
            simplified = path.with_name(path.name + ".simplified.tmp")
            try:
                simplify_onnx(temporary, simplified)
                os.replace(simplified, temporary)
            finally:
                simplified.unlink(missing_ok=True)
        session = _session(temporary)
        generator = torch.Generator().manual_seed(seed)
        per_batch: dict[int, float] = {}
        for batch in check_batches:
            images = torch.rand(batch, 3, FACE_SIZE, FACE_SIZE, generator=generator) * 2 - 1
            with torch.no_grad():
                expected = model(images).numpy()
            got = session.run(None, {"input": images.numpy()})[0]
            if got.shape != expected.shape:
                raise ExportError(f"batch {batch}: ONNX output {got.shape}, PyTorch {expected.shape}")
            per_batch[batch] = float(np.abs(got - expected).max())
            if per_batch[batch] > tolerance:
                raise ExportError(f"batch {batch}: ONNX differs from PyTorch by {per_batch[batch]:.3g} (> {tolerance:g})")
        images = np.random.default_rng(seed).uniform(-1, 1, (64, 3, FACE_SIZE, FACE_SIZE)).astype(np.float32)
        session.run(None, {"input": images})  # warm-up
        start, runs = time.perf_counter(), 0
        while runs < 3 or time.perf_counter() - start < 2.0:
            session.run(None, {"input": images})
            runs += 1
        throughput = runs * 64 / (time.perf_counter() - start)
        del session
        props = {**spec.to_metadata(), "arcface.embedding_size": str(int(expected.shape[1])), **(metadata or {})}
        append_onnx_metadata(temporary, props)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    report = {
        "onnx": str(path), "opset": opset, "bytes": path.stat().st_size, "embedding_size": int(expected.shape[1]),
        "max_abs_diff": max(per_batch.values()), "per_batch": per_batch, "ort_images_per_s": throughput,
        "nodes": _node_count(path), "metadata": props,
    }
    if simplify:
        report["nodes_before_simplify"] = nodes_before
    logger.info("exported %s: max abs diff %.3g over batches %s; onnxruntime %.1f images/s (batch 64)",
                path, report["max_abs_diff"], list(per_batch), throughput)
    return report
