"""arcface: additive angular margin face recognition (ArcFace, TPAMI) on PyTorch.

The library parts (``arcface.heads`` and later ``arcface.backbones``, ``arcface.data``, ...)
import without any distributed setup, logging configuration or command-line parsing.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
