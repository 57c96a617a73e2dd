"""Datasets and formats: image folders, list files, RecordIO (.rec/.idx, no mxnet), .bin verification
sets (safe loader), LFW-style protocols, face detection + 5-point alignment, synthetic data.

>>> from arcface.data import build_dataset
>>> dataset = build_dataset("faces_emore/train.rec")   # or a folder, a list file, "synthetic:N:C"
>>> image, label = dataset[0]                           # (3, 112, 112) float32 in [-1, 1], int
"""

from .align import ARCFACE_TEMPLATE, FaceAligner, FaceDetector, warp_face
from .binset import VerificationSet, read_bin, write_bin
from .datasets import (
    FaceTransform,
    ImageFolderDataset,
    ListDataset,
    RecordDataset,
    SyntheticDataset,
    build_dataset,
    decode_image,
)
from .errors import DataError
from .face_records import FaceRecordFile, write_face_records
from .pack import pack_folder, unpack_records
from .protocols import Pair, read_pairs, read_people, write_pairs
from .recordio import RecordReader, RecordWriter

__all__ = [
    "ARCFACE_TEMPLATE",
    "DataError",
    "FaceAligner",
    "FaceDetector",
    "FaceRecordFile",
    "FaceTransform",
    "ImageFolderDataset",
    "ListDataset",
    "Pair",
    "RecordDataset",
    "RecordReader",
    "RecordWriter",
    "SyntheticDataset",
    "VerificationSet",
    "build_dataset",
    "decode_image",
    "pack_folder",
    "read_bin",
    "read_pairs",
    "read_people",
    "unpack_records",
    "warp_face",
    "write_bin",
    "write_face_records",
    "write_pairs",
]
