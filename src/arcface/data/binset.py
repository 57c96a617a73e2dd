"""insightface ``.bin`` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin), read without trusting pickle.

A .bin is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG bytes, or
numpy uint8 arrays holding those bytes), pair k being ``(bins[2k], bins[2k+1])``, and
``issame_list`` N flags. These files are passed around the internet, and ``pickle.load`` runs
whatever callable a file names, so :func:`read_bin` uses an unpickler that resolves only the few
globals such files contain and refuses every other one (and persistent ids) with a DataError.

Even the allowed names never reach numpy: they resolve to small stand-ins here that only record
what the pickle says (dtype, shape, raw bytes), so crafted arguments meet our checks, not numpy's
reconstruction code, and reading needs no numpy. The globals a real file uses:

* ``numpy.core.multiarray._reconstruct`` (``numpy._core`` since numpy 2), ``numpy.ndarray``,
  ``numpy.dtype``: arrays pickled with protocols 0 to 4 (small_lfw.bin, protocol 3, uses these).
* ``numpy.core.numeric._frombuffer`` (``numpy._core``): arrays pickled with protocol 5.
* ``_codecs.encode``: how Python 3 writes ``bytes`` at protocols 0 to 2 (as latin-1 text).

Python 2 files (insightface's originals) hold images as ``str``, loaded as bytes with
``encoding="bytes"``. :func:`write_bin` writes plain ``bytes`` at protocol 4, which insightface's own
loader reads and which needs no global at all.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .protocols import Pair, atomic_output

__all__ = ["VerificationSet", "read_bin", "write_bin", "bin_from_pairs", "ALLOWED_GLOBALS"]

logger = logging.getLogger(__name__)

# Highest pickle protocol write_bin uses: protocol 5 is Python 3.8+, and older readers may meet .bin files.
_MAX_WRITE_PROTOCOL = 4


@dataclass
class VerificationSet:
    """Pairs of encoded images to verify: ``images[2k]`` and ``images[2k+1]`` form pair k.

    Attributes:
        images: 2N encoded images (JPEG or PNG bytes, as stored; not decoded here).
        issame: N flags, True where pair k shows one person.
        source: the file it was read from, if any.
    """

    images: list[bytes]
    issame: list[bool]
    source: Path | None = None

    def __post_init__(self) -> None:
        if len(self.images) != 2 * len(self.issame):
            where = f"{self.source}: " if self.source is not None else ""
            raise DataError(f"{where}{len(self.images)} images for {len(self.issame)} pairs; need exactly 2 per pair")

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def pairs(self) -> Iterator[tuple[bytes, bytes, bool]]:
        """(left image bytes, right image bytes, same) for each pair, in order."""
        for index, same in enumerate(self.issame):
            yield self.images[2 * index], self.images[2 * index + 1], same


# ------------------------------------------------------------------------------- safe unpickling


class _Refused(Exception):
    """Raised inside the unpickler; read_bin turns it into a DataError naming the file."""


class _Marker:
    """An allowed global that a pickle may pass around but not call: the stand-in for numpy.ndarray."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: Any) -> None:
        # BUILD on a shared object would change it for every later load: refuse, as for _StandIn.
        raise _Refused(f"a BUILD on the global '{self.name}'; this file may be malicious")


class _StandIn(_Marker):
    """An allowed callable global. Not a plain function: BUILD could set attributes on a function."""

    __slots__ = ("function",)

    def __init__(self, name: str, function: Any) -> None:
        super().__init__(name)
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


_NDARRAY = _Marker("numpy.ndarray")


class _Dtype:
    """What ``numpy.dtype(...)`` stands for in a .bin pickle: its type string and BUILD state."""

    __slots__ = ("name", "structured")

    def __init__(self, name: str) -> None:
        self.name = name
        self.structured = False

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
        if not isinstance(state, tuple) or len(state) < 5:
            raise _Refused(f"malformed numpy dtype state {_short(state)}")
        self.structured = any(part is not None for part in state[2:5])


class _Array:
    """What a pickled numpy array stands for: dtype, shape and raw bytes, checked by _image_bytes."""

    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: Any = None, shape: Any = None, data: Any = None) -> None:
        self.dtype, self.shape, self.data = dtype, shape, data

    def __setstate__(self, state: Any) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, rawdata), or the same without version.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"malformed numpy array state {_short(state)}")
        self.shape, self.dtype, _, self.data = state[-4:]


def _text(value: Any) -> str:
    # Python 2 files loaded with encoding="bytes" give b"u1" where Python 3 files give "u1".
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise _Refused(f"expected a string in a numpy record, got {_short(value)}")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _Array:
    if subtype is not _NDARRAY:
        raise _Refused("numpy _reconstruct called for something other than numpy.ndarray")
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    if not isinstance(buffer, (bytes, bytearray)):
        raise _Refused(f"numpy _frombuffer called with {_short(buffer)}, expected bytes")
    return _Array(dtype, shape, bytes(buffer))


def _dtype(name: Any, align: Any = False, copy: Any = False) -> _Dtype:
    return _Dtype(_text(name))


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Python 3 pickles bytes at protocols 0-2 as _codecs.encode(text, "latin1"); nothing else is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode is only allowed for latin-1 bytes, got encoding {_short(encoding)}")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise _Refused("_codecs.encode got text that is not latin-1") from None


# (module, name) -> stand-in: exactly the globals insightface-style .bin files need, nothing else.
_STAND_INS: dict[tuple[str, str], _Marker] = {
    ("numpy.core.multiarray", "_reconstruct"): _StandIn("numpy.core.multiarray._reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _StandIn("numpy._core.multiarray._reconstruct", _reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _StandIn("numpy.core.numeric._frombuffer", _frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _StandIn("numpy._core.numeric._frombuffer", _frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn("numpy.dtype", _dtype),
    ("_codecs", "encode"): _StandIn("_codecs.encode", _codecs_encode),
}

ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{module}.{name}" for module, name in _STAND_INS)


class _BinUnpickler(pickle.Unpickler):
    """Resolves only the globals in _STAND_INS, to stand-ins; refuses all others and persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _STAND_INS[(module, name)]
        except KeyError:
            raise _Refused(
                f"refuses to load global '{module}.{name}': .bin files only contain images and flags; "
                "this file may be malicious"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(
            f"refuses persistent id {_short(pid)}: .bin files only contain images and flags; this file may be malicious"
        )


# What a corrupt or hostile pickle stream can raise while loading, besides our own _Refused.
_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    UnicodeError,
    OverflowError,
    RecursionError,
)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpickle(path: Path) -> Any:
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise DataError(f"{path}: the file is empty; expected an insightface .bin verification set")
        try:
            content = _BinUnpickler(file, encoding="bytes").load()
        except _Refused as error:
            raise DataError(f"{path}: {error}") from None
        except MemoryError:
            raise DataError(
                f"{path}: a record in it claims more memory than is available; the file is corrupt or malicious"
            ) from None
        except _UNPICKLING_ERRORS as error:
            if isinstance(error, EOFError) or "truncated" in str(error):
                size = os.fstat(file.fileno()).st_size
                raise DataError(f"{path}: truncated: the pickle ends at byte {size} before it is complete") from None
            raise DataError(
                f"{path}: not a valid pickle ({type(error).__name__}: {_short(str(error), 100)}); "
                "expected an insightface .bin verification set"
            ) from None
        trailing = os.fstat(file.fileno()).st_size - file.tell()
        if trailing > 0:
            logger.warning("%s: %d bytes after the end of the pickle were ignored", path, trailing)
        return content


# --------------------------------------------------------------------------------------- checks


def _image_bytes(path: Path, index: int, item: Any) -> bytes:
    """The encoded bytes of image ``index``, or DataError saying what the item is instead."""
    if isinstance(item, _Array):
        data = _array_bytes(path, index, item)
    elif isinstance(item, (bytes, bytearray)):
        data = bytes(item)
    else:
        raise DataError(f"{path}: image {index} is a {_kind(item)}, expected encoded image bytes")
    if not data:
        raise DataError(f"{path}: image {index} is empty")
    return data


def _array_bytes(path: Path, index: int, array: _Array) -> bytes:
    dtype = array.dtype
    if not isinstance(dtype, _Dtype) or dtype.name.lstrip("|") not in ("u1", "uint8") or dtype.structured:
        name = dtype.name if isinstance(dtype, _Dtype) else _short(dtype)
        raise DataError(f"{path}: image {index} is a numpy array of dtype {name!r}; images must be uint8 bytes")
    data, shape = array.data, array.shape
    if not isinstance(data, (bytes, bytearray)):
        raise DataError(f"{path}: image {index} is a numpy array without raw bytes ({_kind(data)})")
    if (
        not isinstance(shape, tuple)
        or not all(isinstance(size, int) and size >= 0 for size in shape)
        or sum(size != 1 for size in shape) > 1
    ):
        raise DataError(f"{path}: image {index} has shape {_short(shape)}; expected (n,) or (n, 1) bytes")
    size = 1
    for dimension in shape:
        size *= dimension
    if size != len(data):
        raise DataError(f"{path}: image {index} has shape {shape} but {len(data)} bytes of data")
    return bytes(data)


def _flag(path: Path, index: int, value: Any) -> bool:
    # Python 2 protocol 0 pickles may store flags as 0/1; anything else is not a flag.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DataError(f"{path}: issame flag {index} is {_short(value)}, expected True or False")


def _kind(value: Any) -> str:
    if isinstance(value, (_Array, _Dtype)):
        return "numpy record"
    if isinstance(value, _Marker):
        return f"global {value.name}"
    return type(value).__name__


# ----------------------------------------------------------------------------------------- API


def read_bin(path: str | os.PathLike) -> VerificationSet:
    """Load an insightface .bin verification set safely (no code in the file is run).

    Raises:
        DataError: missing, truncated or non-pickle file; a global other than the few a .bin needs
            (named in the message); a structure other than ``(2N images, N flags)``.
    """
    path = Path(path)
    content = _unpickle(path)
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        size = f" of length {len(content)}" if isinstance(content, (tuple, list)) else ""
        raise DataError(f"{path}: holds a {_kind(content)}{size}; expected a pair (images, issame_list)")
    bins, flags = content
    for value, what in ((bins, "images"), (flags, "issame_list")):
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{path}: {what} is a {_kind(value)}, expected a list")
    if len(bins) != 2 * len(flags):
        raise DataError(
            f"{path}: {len(bins)} images for {len(flags)} issame flags; a .bin holds exactly 2 images per flag"
        )
    images = [_image_bytes(path, index, item) for index, item in enumerate(bins)]
    issame = [_flag(path, index, value) for index, value in enumerate(flags)]
    logger.debug("read %d pairs (%d same) from %s", len(issame), sum(issame), path)
    return VerificationSet(images, issame, path)


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool], protocol: int = 4) -> None:
    """Write a .bin that insightface's loader reads: ``(list of bytes, list of bool)``, no numpy.

    The file is written to a temporary name beside ``path`` and renamed over it when complete.
    Identical ``bytes`` objects (one image in several pairs) are stored once by pickle's memo.
    """
    if not 2 <= protocol <= _MAX_WRITE_PROTOCOL:
        raise ValueError(
            f"protocol must be 2 to {_MAX_WRITE_PROTOCOL} (what older insightface readers load), got {protocol}"
        )
    images = list(images)
    issame = list(issame)
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} issame flags: need exactly 2 images per flag")
    for index, image in enumerate(images):
        if not isinstance(image, (bytes, bytearray, memoryview)) or not len(image):
            raise ValueError(f"image {index} must be non-empty encoded image bytes, got {_short(image)}")
        if not isinstance(image, bytes):
            images[index] = bytes(image)
    flags = [bool(flag) for flag in issame]
    with atomic_output(path) as file:
        pickle.dump((images, flags), file, protocol=protocol)
    logger.debug("wrote %d pairs to %s", len(flags), path)


def bin_from_pairs(
    pairs: Sequence[Pair], out_path: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> VerificationSet:
    """Pack protocol pairs (see :mod:`arcface.data.protocols`) into a .bin, each image file's bytes unchanged.

    Pair order is kept, so a View 2 ``pairs.txt`` keeps its folds as contiguous blocks, which is how
    insightface's evaluation splits a .bin; folds themselves are not stored. Paths are relative to
    ``image_root`` (or used as given when it is None).
    """
    root = Path(image_root) if image_root is not None else None
    cache: dict[str, bytes] = {}
    images: list[bytes] = []
    for index, pair in enumerate(pairs):
        for relative in (pair.left, pair.right):
            if relative not in cache:
                file = root / relative if root is not None else Path(relative)
                try:
                    cache[relative] = file.read_bytes()
                except OSError as error:
                    raise DataError(f"{file}: cannot read image of pair {index}: {error.strerror or error}") from None
                if not cache[relative]:
                    raise DataError(f"{file}: image of pair {index} is an empty file")
            images.append(cache[relative])
    issame = [bool(pair.same) for pair in pairs]
    write_bin(out_path, images, issame)
    logger.info("packed %d pairs (%d distinct images) into %s", len(issame), len(cache), out_path)
    return VerificationSet(images, issame, Path(out_path))
