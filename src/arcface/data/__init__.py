"""Datasets and formats: image folders, list files, RecordIO (.rec/.idx, no mxnet), .bin verification
sets (safe loader), LFW-style protocols, face detection + 5-point alignment, synthetic data."""

from .errors import DataError

__all__ = ["DataError"]
