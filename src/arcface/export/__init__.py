"""Export of trained backbones (ONNX, with a parity check). Imports without any distributed setup."""

from .onnx import DEFAULT_OPSET, ExportError, export_onnx

__all__ = ["DEFAULT_OPSET", "ExportError", "export_onnx"]
