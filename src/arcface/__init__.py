"""arcface: additive angular margin face recognition (ArcFace, TPAMI) on PyTorch.

The library parts (``arcface.heads``, ``arcface.backbones``, ``arcface.data``, ``arcface.eval``,
``arcface.clean``, ``arcface.invert``, ``arcface.export``) import without any distributed setup,
logging configuration or command-line parsing. ``arcface.FaceRecognizer`` and ``arcface.Gallery``
are loaded on first use, so ``import arcface`` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "FaceRecognizer", "Gallery"]


def __getattr__(name: str):
    if name in ("FaceRecognizer", "Gallery"):
        from . import recognizer

        return getattr(recognizer, name)
    raise AttributeError(f"module 'arcface' has no attribute {name!r}")
