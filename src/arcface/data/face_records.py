"""insightface's face-dataset layout on top of RecordIO: labels, identity ranges, ``property``.

Plain ``im2rec`` files hold one image per record. insightface's (``faces_emore/train.rec``) adds a
header record at key 0 whose two labels ``(a, b)`` say that keys ``1..a-1`` are images and keys
``a..b-1`` are one identity record per class, whose two labels are that class's ``[start, end)``
image-key range; a ``property`` file beside it holds ``num_classes,height,width``.
:class:`FaceRecordFile` reads both; :func:`write_face_records` writes the insightface one.
"""

from __future__ import annotations

import bisect
import logging
import numbers
import os
import tempfile
from array import array
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import DataError
from .recordio import (
    _FLOAT32_EXACT,
    PROPERTY_NAME,
    PathLike,
    RecordHeader,
    RecordReader,
    RecordWriter,
    pack_record,
    unpack_record,
)

__all__ = ["FaceRecordFile", "read_property", "write_face_records"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- face datasets


def _class_of(header: RecordHeader, source: str) -> int:
    """The class id a face image record carries: its label, or the first of several."""
    value = header.first_label
    if not value.is_integer() or value < 0 or value >= _FLOAT32_EXACT:
        raise DataError(f"{source}: label {value:g} is not a class id (an integer in 0..{_FLOAT32_EXACT - 1})")
    return int(value)


def read_property(path: PathLike) -> tuple[int, int, int]:
    """``(num_classes, height, width)`` from an insightface ``property`` file (``C,H,W``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        values = tuple(int(field) for field in text.split(","))
    except (UnicodeDecodeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) <= 0:
        shown = path.read_bytes()[:60]
        raise DataError(
            f"{path}: expected 'num_classes,height,width' (three positive integers), got {shown!r}"
        )
    return values  # type: ignore[return-value]


class FaceRecordFile:
    """A face dataset in a .rec file: image keys, their class labels and their encoded bytes.

    Handles both layouts: insightface's (header record at key 0, identity records after the
    images; labels come from the identity records without reading any image) and plain im2rec
    (every record an image; labels come from each image's header, read once at open).

    Attributes:
        reader: the underlying :class:`RecordReader`.
        has_header: whether the file has insightface's header record.
        image_keys: record keys of the images; index order for im2rec files, 1..N for insightface.
        labels: class of each image, same order as ``image_keys``.
        num_classes: from ``property`` when present, else from the identity records or max label + 1.
        image_size: ``(height, width)`` from ``property``, or None without one.
        identity_ranges: insightface layout: per class, its ``[start, end)`` image-key range; else None.

    Raises:
        DataError: any problem with the files, naming the file and record; a ``property`` whose
            class count is smaller than the labels need.
    """

    def __init__(self, rec_path: PathLike, idx_path: PathLike | None = None) -> None:
        self.reader = RecordReader(rec_path, idx_path)
        self.rec_path = self.reader.rec_path
        self.property_path = self.rec_path.parent / PROPERTY_NAME
        self.identity_ranges: list[tuple[int, int]] | None = None
        self._label_by_key: dict[int, int] | None = None
        self._range_ends: list[int] = []
        self._image_key_end = 0
        header_labels = self._header_record()
        self.has_header = header_labels is not None
        if header_labels is not None:
            self._load_insightface(*header_labels)
        else:
            self._load_from_image_headers(self.reader.keys)
        self.num_classes, self.image_size = self._class_count()

    def _source(self, key: int) -> str:
        return f"{self.rec_path} key {key}"

    def _header_record(self) -> tuple[int, int] | None:
        """``(a, b)`` of insightface's header record, or None for an im2rec file.

        Record 0 is a header when it has at least two float labels forming a key range
        ``1 <= a <= b``; an im2rec image with several labels at key 0 has a payload and labels that
        rarely look like that, but insightface's own rule (flag > 0) would misread it.
        """
        if 0 not in self.reader:
            return None
        header = self.reader.read_header(0)
        if header.flag < 2:
            return None
        a, b = header.label[0], header.label[1]
        if not (a.is_integer() and b.is_integer() and 1 <= a <= b <= _FLOAT32_EXACT + 1):
            logger.info("%s: record 0 has labels %s, not a header record; reading as im2rec",
                        self.rec_path, header.label)
            return None
        return int(a), int(b)

    def _load_insightface(self, first_identity: int, end_identity: int) -> None:
        self._image_key_end = first_identity
        present = [key for key in range(1, first_identity) if key in self.reader]
        missing = first_identity - 1 - len(present)
        if missing:
            logger.warning("%s: %d of the %d image keys the header record announces are missing "
                           "from the index; they are skipped", self.rec_path, missing, first_identity - 1)
        ranges = self._identity_ranges(first_identity, end_identity)
        if ranges is None:
            self._load_from_image_headers(present)
            return
        self.identity_ranges = ranges
        self._range_ends = [end for _, end in ranges]
        self.image_keys, self.labels = [], []
        for label, (start, end) in enumerate(ranges):
            for key in range(start, end):
                if key in self.reader:
                    self.image_keys.append(key)
                    self.labels.append(label)

    def _identity_ranges(self, first_identity: int, end_identity: int) -> list[tuple[int, int]] | None:
        """Per-class image-key ranges from the identity records, or None (with a warning) when
        they are absent or do not tile the image keys, so labels must come from the images."""
        if end_identity == first_identity:
            logger.info("%s: no identity records; reading labels from the image headers", self.rec_path)
            return None
        ranges = []
        expected_start = 1
        for key in range(first_identity, end_identity):
            if key not in self.reader:
                problem = f"identity record {key} is missing from the index"
                break
            labels = self.reader.read_header(key).label
            if not isinstance(labels, tuple) or len(labels) < 2:
                problem = f"identity record {key} has label {labels}, not a [start, end) range"
                break
            start, end = labels[0], labels[1]
            if not (start == expected_start and start.is_integer() and end.is_integer() and start <= end):
                problem = (f"identity record {key} has range [{start}, {end}), expected one starting "
                           f"at {expected_start}")
                break
            ranges.append((int(start), int(end)))
            expected_start = int(end)
        else:
            if expected_start == first_identity:
                return ranges
            problem = f"identity ranges end at key {expected_start}, images at {first_identity - 1}"
        logger.warning("%s: %s; reading labels from the image headers instead", self.rec_path, problem)
        return None

    def _load_from_image_headers(self, keys: Sequence[int]) -> None:
        if len(keys) > 100_000:
            logger.info("%s: reading the labels of %d image headers", self.rec_path, len(keys))
        self.image_keys = list(keys)
        self.labels = [_class_of(self.reader.read_header(key), self._source(key)) for key in self.image_keys]
        self._label_by_key = dict(zip(self.image_keys, self.labels))

    def _class_count(self) -> tuple[int, tuple[int, int] | None]:
        """Class count and image size, checking ``property`` against the labels."""
        largest = max(self.labels, default=-1)
        if not self.property_path.is_file():
            counted = len(self.identity_ranges) if self.identity_ranges is not None else largest + 1
            return counted, None
        num_classes, height, width = read_property(self.property_path)
        if largest >= num_classes:
            key = self.image_keys[self.labels.index(largest)]
            raise DataError(
                f"{self.property_path}: says {num_classes} classes but {self._source(key)} has "
                f"label {largest}; the property file belongs to another dataset"
            )
        if self.identity_ranges is not None and len(self.identity_ranges) != num_classes:
            raise DataError(
                f"{self.property_path}: says {num_classes} classes but {self.rec_path} has "
                f"{len(self.identity_ranges)} identity records"
            )
        if largest + 1 < num_classes:
            logger.warning("%s: says %d classes, the labels use only 0..%d", self.property_path,
                           num_classes, largest)
        return num_classes, (height, width)

    # -- access

    def __len__(self) -> int:
        return len(self.image_keys)

    def __repr__(self) -> str:
        layout = "insightface" if self.has_header else "im2rec"
        return (f"FaceRecordFile({str(self.rec_path)!r}, {layout}, {len(self)} images, "
                f"{self.num_classes} classes)")

    def _check_image_key(self, key: int) -> None:
        if self._label_by_key is not None:
            known = key in self._label_by_key
        else:
            known = 1 <= key < self._image_key_end and key in self.reader
        if not known:
            raise DataError(f"{self.rec_path}: key {key!r} is not an image record of this dataset")

    def label_of(self, key: int) -> int:
        """Class of the image with this record key."""
        self._check_image_key(key)
        if self._label_by_key is not None:
            return self._label_by_key[key]
        return bisect.bisect_right(self._range_ends, key)

    def image_bytes(self, key: int) -> bytes:
        """Encoded image bytes (JPEG, PNG, ...) of the image with this record key, as stored."""
        self._check_image_key(key)
        return unpack_record(self.reader.read(key), self._source(key))[1]

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "FaceRecordFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _as_class_id(label: object, where: str) -> int:
    """``label`` as an int class id; integral floats (3.0) are accepted."""
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        value = int(label)
    elif isinstance(label, numbers.Real) and float(label).is_integer():
        value = int(label)
    else:
        raise DataError(f"{where} has label {label!r}, not a class id (a non-negative integer)")
    if value < 0 or value >= _FLOAT32_EXACT:
        raise DataError(f"{where} has label {value}, not a class id (an integer in 0..{_FLOAT32_EXACT - 1})")
    return value


def _check_face_labels(labels: Sequence[int], source: str) -> int:
    """Number of classes; labels must be sorted and use every class id 0..C-1."""
    previous = -1
    for position, label in enumerate(labels):
        if label < previous:
            raise ValueError(f"{source}: labels must be grouped in ascending order (position {position})")
        if label > previous + 1 or label < 0:
            missing = previous + 1 if label > previous + 1 else label
            raise DataError(
                f"{source}: labels must be 0..C-1 without gaps, but class {missing} has no image "
                f"(next label is {label}); renumber the classes"
            )
        previous = label
    return previous + 1


def _check_float32_keys(num_images: int, num_classes: int, source: str) -> None:
    """insightface stores keys as float32 labels: every key up to 1 + N + C must be exact."""
    last = 1 + num_images + num_classes
    if last > _FLOAT32_EXACT:
        raise DataError(
            f"{source}: {num_images} images and {num_classes} classes need record keys up to {last}, "
            f"but the insightface layout stores keys as float32, exact only up to {_FLOAT32_EXACT}; "
            f"split the dataset into several .rec files"
        )


def _write_face_layout(
    rec_path: PathLike, labels: Sequence[int], payloads: Iterable[bytes], image_size: tuple[int, int]
) -> int:
    """Write the insightface layout for images already in ascending label order.

    ``payloads`` yields the encoded image bytes in the order of ``labels``.
    """
    rec_path = Path(rec_path)
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be two positive integers, got {image_size}")
    num_classes = _check_face_labels(labels, str(rec_path))
    num_images = len(labels)
    if num_images == 0:
        raise DataError(f"{rec_path}: no images to write")
    _check_float32_keys(num_images, num_classes, str(rec_path))
    first_identity = num_images + 1
    end_identity = first_identity + num_classes
    starts = [0] * (num_classes + 1)
    for key, label in enumerate(labels, start=1):
        if starts[label] == 0:
            starts[label] = key
    starts[num_classes] = first_identity
    written = 0
    with RecordWriter(rec_path) as writer:
        header = RecordHeader.of((first_identity, end_identity))
        writer.write(0, pack_record(header))
        for key, (label, payload) in enumerate(zip(labels, payloads), start=1):
            writer.write(key, pack_record(RecordHeader.of(float(label), id=key), payload))
            written += 1
        if written != num_images:
            raise ValueError(f"{rec_path}: got {written} image payloads for {num_images} labels")
        for label in range(num_classes):
            key = first_identity + label
            writer.write(key, pack_record(RecordHeader.of((starts[label], starts[label + 1]), id=key)))
    _write_property(rec_path.parent / PROPERTY_NAME, num_classes, height, width)
    logger.info("%s: wrote %d images of %d classes", rec_path, num_images, num_classes)
    return num_images


def _write_property(path: Path, num_classes: int, height: int, width: int) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(f"{num_classes},{height},{width}", encoding="ascii")
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


def write_face_records(
    rec_path: PathLike, samples: Iterable[tuple[bytes, int]], image_size: tuple[int, int] = (112, 112)
) -> int:
    """Write a face dataset in insightface's layout: .rec, .idx and ``property``.

    Record 0 is the header record (labels ``(N + 1, N + 1 + C)``), records 1..N the images
    grouped by label in ascending order (stable for equal labels), records N+1..N+C one identity
    record per class with its ``[start, end)`` image-key range. ``property`` (``C,H,W``) is
    written beside the .rec under exactly that name, which is where insightface looks for it;
    a dataset therefore needs a folder of its own.

    Args:
        rec_path: the .rec to create; the .idx gets the same name with suffix ``.idx``.
        samples: ``(encoded_image_bytes, label)`` pairs, in any order. The bytes are spooled to a
            temporary file beside the output while they are sorted, so memory stays small.
        image_size: ``(height, width)`` recorded in ``property``.

    Returns:
        The number of images written.

    Raises:
        DataError: labels that are not 0..C-1 without gaps, no samples, or more images and classes
            than float32 keys can address (2**24).
    """
    rec_path = Path(rec_path)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    labels = array("q")
    offsets = array("q", [0])
    with tempfile.TemporaryFile(dir=rec_path.parent, prefix=rec_path.name + ".spool") as spool:
        for position, (payload, label) in enumerate(samples):
            labels.append(_as_class_id(label, f"{rec_path}: sample {position}"))
            spool.write(payload)
            offsets.append(offsets[-1] + len(payload))
        order = sorted(range(len(labels)), key=labels.__getitem__)  # sorted() is stable

        def payloads() -> Iterator[bytes]:
            for index in order:
                spool.seek(offsets[index])
                yield spool.read(offsets[index + 1] - offsets[index])

        return _write_face_layout(rec_path, [labels[i] for i in order], payloads(), image_size)
