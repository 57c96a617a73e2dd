"""MXNet RecordIO (.rec/.idx) in pure Python, so insightface datasets load without mxnet.

Written from the dmlc RecordIO format description:

- A file is a sequence of chunks: uint32 LE magic ``0xced7230a``, uint32 LE ``lrec`` (3-bit
  continuation flag ``lrec >> 29``, 29-bit length), the data, zero padding to a multiple of 4.
- A record whose bytes hold the magic word at a 4-byte-aligned position is split there: the magic
  word is dropped and the parts are written as chunks flagged 1 (first), 2 (middle), 3 (last);
  an unsplit record is flagged 0. Readers join the parts with the magic word between them.
  JPEG bytes contain that word now and then, so a reader that ignores the flags breaks on a
  million-image set while passing every small test.
- The ``.idx`` text file maps record keys to the byte offset of their first chunk, one
  ``key<TAB>offset`` line per record, in write order.
- A record's content is the IRHeader ``<IfQQ`` (flag, label, id, id2), then ``flag`` float32
  labels when flag > 0, then the payload (encoded image bytes).

The face-dataset layouts (plain im2rec, insightface's header + identity records) are read and
written by :mod:`arcface.data.face_records`.

Readers open their file lazily and reopen it in a new process, so one object can be handed to
DataLoader workers (a file handle shared across ``fork`` would interleave their seeks).
"""

from __future__ import annotations

import logging
import numbers
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence, Union

from .errors import DataError

__all__ = [
    "MAGIC",
    "RecordHeader",
    "pack_record",
    "unpack_record",
    "RecordReader",
    "RecordWriter",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK_HEAD = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
_CFLAG_NAMES = {0: "whole", 1: "first part", 2: "middle part", 3: "last part"}
# float32 holds every integer up to 2**24 exactly; insightface stores record keys as float labels.
_FLOAT32_EXACT = 1 << 24
# Bytes read to parse a record header without reading its image (IRHeader + a few labels).
_HEADER_PREFIX = 256
PROPERTY_NAME = "property"


# --------------------------------------------------------------------------- record content


@dataclass(frozen=True)
class RecordHeader:
    """MXNet's IRHeader. ``flag`` is 0 with a scalar ``label``, or the number of float labels
    when ``label`` is a tuple (then the header's own label field is written as 0).

    Use :meth:`of` to have ``flag`` derived from the label.
    """

    flag: int
    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.label, numbers.Real):
            object.__setattr__(self, "label", float(self.label))
            if self.flag != 0:
                raise ValueError(f"RecordHeader: flag must be 0 with a scalar label, got flag={self.flag}")
            return
        labels = tuple(float(value) for value in self.label)
        object.__setattr__(self, "label", labels)
        if not labels or self.flag != len(labels):
            raise ValueError(
                f"RecordHeader: flag must equal the number of labels (at least 1) with a label tuple, "
                f"got flag={self.flag} and {len(labels)} labels; RecordHeader.of(label) derives it"
            )

    @classmethod
    def of(cls, label: float | Sequence[float], id: int = 0, id2: int = 0) -> "RecordHeader":
        """A header with ``flag`` set from the label: 0 for a number, else the label count."""
        if isinstance(label, numbers.Real):
            return cls(0, label, id, id2)
        labels = tuple(label)
        return cls(len(labels), labels, id, id2)

    @property
    def first_label(self) -> float:
        """The scalar label, or the first of several (where face datasets keep the class)."""
        return self.label[0] if isinstance(self.label, tuple) else self.label


def pack_record(header: RecordHeader, payload: bytes = b"") -> bytes:
    """Record content: IRHeader, the float labels when ``header.flag > 0``, then ``payload``."""
    scalar = 0.0 if isinstance(header.label, tuple) else header.label
    try:
        head = _IR_HEADER.pack(header.flag, scalar, header.id, header.id2)
        if isinstance(header.label, tuple):
            head += struct.pack(f"<{len(header.label)}f", *header.label)
    except (struct.error, OverflowError) as error:
        raise ValueError(
            f"cannot pack {header}: flag must fit uint32, id and id2 uint64, labels float32 ({error})"
        ) from None
    return head + bytes(payload)


def unpack_record(content: bytes, source: str = "") -> tuple[RecordHeader, bytes]:
    """Split record content into its header and payload.

    Args:
        content: one record's bytes, as :meth:`RecordReader.read` returns them.
        source: where it came from (file and key), prefixed to error messages.

    Raises:
        DataError: the content is shorter than the header and the labels it announces.
    """
    where = f"{source}: " if source else ""
    if len(content) < _IR_HEADER.size:
        raise DataError(
            f"{where}record is {len(content)} bytes, shorter than the {_IR_HEADER.size}-byte "
            f"IRHeader; the file is corrupt or not an MXNet image RecordIO"
        )
    flag, label, id_, id2 = _IR_HEADER.unpack_from(content)
    start = _IR_HEADER.size
    if flag == 0:
        return RecordHeader(0, label, id_, id2), bytes(content[start:])
    end = start + 4 * flag
    if end > len(content):
        raise DataError(
            f"{where}header announces {flag} float labels ({4 * flag} bytes) but the record has only "
            f"{len(content) - start} bytes after its header; the file is corrupt"
        )
    labels = struct.unpack_from(f"<{flag}f", content, start)
    return RecordHeader(flag, labels, id_, id2), bytes(content[end:])


# --------------------------------------------------------------------------- chunks


def _aligned_magic_positions(content: bytes) -> list[int]:
    """4-byte-aligned offsets where ``content`` holds the magic word (the writer splits there)."""
    positions = []
    position = content.find(_MAGIC_BYTES)
    while position != -1:
        if position % 4 == 0:
            positions.append(position)
            position = content.find(_MAGIC_BYTES, position + 4)
        else:
            position = content.find(_MAGIC_BYTES, position + 1)
    return positions


def _encode_chunks(content: bytes) -> bytes:
    """The chunks of one record: split at aligned magic words, each chunk padded to 4 bytes."""
    positions = _aligned_magic_positions(content)
    if not positions:
        pieces = [(0, content)]
    else:
        bounds = [0, *(p + 4 for p in positions)]
        ends = [*positions, len(content)]
        flags = [1] + [2] * (len(positions) - 1) + [3]
        pieces = [(flag, content[lo:hi]) for flag, lo, hi in zip(flags, bounds, ends)]
    out = bytearray()
    for cflag, data in pieces:
        out += _CHUNK_HEAD.pack(MAGIC, (cflag << _LENGTH_BITS) | len(data))
        out += data
        out += bytes(-len(data) % 4)
    return bytes(out)


def _read_record(handle: BinaryIO, offset: int, file_size: int, name: str) -> tuple[bytes, int]:
    """Read the record whose first chunk starts at ``offset`` (the handle's position).

    Returns the content with split parts joined, and the offset just past its last chunk.
    """
    parts: list[bytes] = []
    position = offset
    while True:
        # Name the chunk only when it is not the record's first: the usual case reads as one offset.
        where = f"{name}: record at offset {offset}" + (f", chunk at offset {position}" if parts else "")
        head = handle.read(_CHUNK_HEAD.size)
        if len(head) < _CHUNK_HEAD.size:
            inside = "a chunk header" if head else "the record (its last part is missing)"
            raise DataError(f"{where}: file ends at byte {file_size} inside {inside}; the file is truncated")
        magic, lrec = _CHUNK_HEAD.unpack(head)
        if magic != MAGIC:
            raise DataError(
                f"{where}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}); "
                f"the file is corrupt or not RecordIO"
            )
        cflag, length = lrec >> _LENGTH_BITS, lrec & _MAX_LENGTH
        data_end = position + _CHUNK_HEAD.size + length
        if data_end > file_size:
            raise DataError(
                f"{where}: chunk declares {length} bytes but the file ends at byte {file_size}; "
                f"the file is truncated"
            )
        if cflag > 3:
            raise DataError(f"{where}: unknown continuation flag {cflag}; the file is corrupt")
        if (cflag in (0, 1)) == bool(parts):
            expected = "a middle or last part" if parts else "a whole record or a first part"
            raise DataError(
                f"{where}: expected {expected} but found a {_CFLAG_NAMES[cflag]} (continuation "
                f"flag {cflag}); the file is corrupt or the offset is not the start of a record"
            )
        data = handle.read(length)
        padding = -length % 4
        handle.read(padding)  # a writer always pads; a missing pad at the very end is tolerated
        position = data_end + padding
        if cflag == 0:
            return data, position
        parts.append(data)
        if cflag == 3:
            return _MAGIC_BYTES.join(parts), position


# --------------------------------------------------------------------------- reader


class RecordReader:
    """Random and sequential access to a .rec file through its .idx.

    Args:
        rec_path: the .rec file.
        idx_path: its index; default: ``rec_path`` with suffix ``.idx`` when that exists. Without
            an index, the file is scanned once at open and keys are record positions 0..N-1.

    Attributes:
        keys: record keys in index order.

    The file handle is opened on first use and reopened when the process id changes; pickling
    drops it. Hand one reader to every DataLoader worker and each reads through its own handle.
    """

    def __init__(self, rec_path: PathLike, idx_path: PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: no such RecordIO file")
        self._size = self.rec_path.stat().st_size
        if idx_path is None:
            default = self.rec_path.with_suffix(".idx")
            self.idx_path = default if default.is_file() else None
        else:
            self.idx_path = Path(idx_path)
            if not self.idx_path.is_file():
                raise DataError(f"{self.idx_path}: no such index file (given for {self.rec_path})")
        self._handle: BinaryIO | None = None
        self._pid: int | None = None
        if self.idx_path is not None:
            self._offsets = self._load_index(self.idx_path)
        else:
            logger.warning("%s: no .idx beside it; scanning the file to index its records", self.rec_path)
            self._offsets = {key: offset for key, (offset, _) in enumerate(self)}
        self.keys: list[int] = list(self._offsets)

    def _load_index(self, idx_path: Path) -> dict[int, int]:
        """Parse ``key<TAB>offset`` lines; check each offset lies inside the .rec file."""
        offsets: dict[int, int] = {}
        with open(idx_path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    if len(fields) != 2:
                        raise ValueError
                    key, offset = int(fields[0]), int(fields[1])
                except ValueError:
                    shown = line[:80].decode("utf-8", errors="replace").rstrip()
                    raise DataError(
                        f"{idx_path}: line {number}: expected 'key<TAB>offset' (two integers), got "
                        f"{shown!r}; the index is corrupt or not a RecordIO .idx"
                    ) from None
                if key in offsets:
                    raise DataError(f"{idx_path}: line {number}: key {key} appears twice")
                if offset < 0 or offset % 4 or offset >= self._size:
                    problem = (
                        f"is past the end of {self.rec_path} ({self._size} bytes)"
                        if offset >= self._size
                        else "is not a record start (negative or not a multiple of 4)"
                    )
                    raise DataError(
                        f"{idx_path}: line {number}: offset {offset} of key {key} {problem}; "
                        f"the index does not belong to this .rec or one of them is truncated"
                    )
                offsets[key] = offset
        return offsets

    # -- handle management

    def _file(self) -> BinaryIO:
        if self._handle is None or self._pid != os.getpid():
            # After fork the inherited handle shares its position with the parent: never reuse it.
            self._handle = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close the file handle (the reader reopens it if used again)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to do
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    # -- access

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._offsets

    def __repr__(self) -> str:
        return f"RecordReader({str(self.rec_path)!r}, {len(self)} records)"

    def offset_of(self, key: int) -> int:
        """Byte offset of the record's first chunk, from the index."""
        try:
            return self._offsets[key]
        except (KeyError, TypeError):
            source = self.idx_path if self.idx_path is not None else "the scanned file"
            raise DataError(f"{self.rec_path}: no record with key {key!r} in {source}") from None

    def read(self, key: int) -> bytes:
        """The content of the record with this key (IRHeader + labels + payload), parts joined."""
        return self.read_at(self.offset_of(key))[0]

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """The record whose first chunk is at ``offset``, and the offset of the next record."""
        if offset < 0 or offset >= self._size:
            raise DataError(f"{self.rec_path}: offset {offset} is outside the file ({self._size} bytes)")
        handle = self._file()
        handle.seek(offset)
        return _read_record(handle, offset, self._size, str(self.rec_path))

    def read_header(self, key: int) -> RecordHeader:
        """The IRHeader of a record, reading only its first bytes when it is not split."""
        offset = self.offset_of(key)
        handle = self._file()
        handle.seek(offset)
        head = handle.read(_CHUNK_HEAD.size)
        if len(head) == _CHUNK_HEAD.size:
            magic, lrec = _CHUNK_HEAD.unpack(head)
            if magic == MAGIC and lrec >> _LENGTH_BITS == 0:
                prefix = handle.read(min(lrec & _MAX_LENGTH, _HEADER_PREFIX))
                if len(prefix) >= _IR_HEADER.size:
                    flag = struct.unpack_from("<I", prefix)[0]
                    if _IR_HEADER.size + 4 * flag <= len(prefix):
                        return unpack_record(prefix, f"{self.rec_path} key {key}")[0]
        # Split, long-labelled or damaged: the full read gives the precise error if there is one.
        return unpack_record(self.read(key), f"{self.rec_path} key {key}")[0]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, content)`` of every record in file order, without the index."""
        with open(self.rec_path, "rb") as handle:
            offset = 0
            while offset < self._size:
                content, next_offset = _read_record(handle, offset, self._size, str(self.rec_path))
                yield offset, content
                offset = next_offset


# --------------------------------------------------------------------------- writer


class RecordWriter:
    """Append records to a new .rec and write its .idx at :meth:`close`.

    Both files are written as ``<path>.partial`` and renamed into place at :meth:`close`, so an
    interrupted pack never leaves a .rec that looks complete. Leaving the ``with`` block on an
    exception deletes the partial files instead.

    Args:
        rec_path: the .rec to create (replaced if it exists; parent folders are created).
        idx_path: its index; default: ``rec_path`` with suffix ``.idx``.
    """

    def __init__(self, rec_path: PathLike, idx_path: PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if self.idx_path.resolve() == self.rec_path.resolve():
            raise ValueError(f"{self.rec_path}: the .rec and .idx paths must differ")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self.idx_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec_partial = self.rec_path.with_name(self.rec_path.name + ".partial")
        self._idx_partial = self.idx_path.with_name(self.idx_path.name + ".partial")
        self._handle: BinaryIO | None = open(self._rec_partial, "wb")
        self._offsets: dict[int, int] = {}
        self._offset = 0

    def __len__(self) -> int:
        return len(self._offsets)

    def write(self, key: int, content: bytes) -> int:
        """Append one record under ``key``; returns its offset.

        Raises:
            ValueError: a repeated or negative key, content of 2**29 bytes or more, or a closed writer.
        """
        if self._handle is None:
            raise ValueError(f"{self.rec_path}: writer is closed")
        key = int(key)
        if key < 0:
            raise ValueError(f"{self.rec_path}: record keys must be non-negative, got {key}")
        if key in self._offsets:
            raise ValueError(f"{self.rec_path}: key {key} was already written")
        if len(content) > _MAX_LENGTH:
            raise ValueError(
                f"{self.rec_path}: record {key} is {len(content)} bytes; RecordIO records hold at "
                f"most {_MAX_LENGTH} bytes"
            )
        encoded = _encode_chunks(bytes(content))
        self._handle.write(encoded)
        offset = self._offset
        self._offsets[key] = offset
        self._offset += len(encoded)
        return offset

    def close(self) -> None:
        """Finish: write the index, then move both files to their final names."""
        if self._handle is None:
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            handle, self._handle = self._handle, None
            handle.close()
            with open(self._idx_partial, "w", encoding="ascii") as index:
                index.writelines(f"{key}\t{offset}\n" for key, offset in self._offsets.items())
            # Remove a stale index first: a new .rec beside an old .idx would read wrong records.
            self.idx_path.unlink(missing_ok=True)
            os.replace(self._rec_partial, self.rec_path)
            os.replace(self._idx_partial, self.idx_path)
        except OSError:
            self.abort()  # e.g. a full disk: no partial file stays behind
            raise
        logger.debug("wrote %d records to %s", len(self._offsets), self.rec_path)

    def abort(self) -> None:
        """Stop without producing output: delete the partial files."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:  # flushing the buffer onto a full disk fails again; the file goes anyway
                pass
        self._rec_partial.unlink(missing_ok=True)
        self._idx_partial.unlink(missing_ok=True)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
