"""insightface .bin verification sets: the real small_lfw.bin, round trips, numpy and Python 2 layouts,
malicious pickles that must be refused without running anything, and corrupt files."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

from arcface.data import DataError
from arcface.data.binset import ALLOWED_GLOBALS, VerificationSet, bin_from_pairs, read_bin, write_bin
from arcface.data.protocols import Pair, read_pairs
from conftest import shared_path

SMALL_LFW = "fixtures/bin/small_lfw.bin"


def _jpeg(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


IMAGES = [_jpeg(seed) for seed in range(6)]
FLAGS = [True, False, True]


# ------------------------------------------------------------------------------- the real file


def test_small_lfw_loads():
    dataset = read_bin(shared_path(SMALL_LFW))
    assert dataset.num_pairs == 10
    assert len(dataset.images) == 20
    assert dataset.issame == [True] * 10
    for image in dataset.images:
        assert isinstance(image, bytes)
        with Image.open(io.BytesIO(image)) as decoded:
            assert decoded.size == (112, 112)
    pairs = list(dataset.pairs())
    assert pairs[3] == (dataset.images[6], dataset.images[7], True)


def test_small_lfw_bytes_match_numpy_unpickling():
    """Our stand-ins give the same bytes as numpy itself does on this (trusted, known) file."""
    path = shared_path(SMALL_LFW)
    with open(path, "rb") as file:
        arrays, flags = pickle.load(file, encoding="bytes")
    dataset = read_bin(path)
    assert dataset.images == [array.tobytes() for array in arrays]
    assert dataset.issame == flags


def test_small_lfw_only_needs_allowed_globals():
    import pickletools

    data = shared_path(SMALL_LFW).read_bytes()
    named = {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert named and named <= ALLOWED_GLOBALS


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_write_read_round_trip(tmp_path, protocol):
    path = tmp_path / "set.bin"
    write_bin(path, IMAGES, FLAGS, protocol=protocol)
    dataset = read_bin(path)
    assert dataset.images == IMAGES
    assert dataset.issame == FLAGS
    assert dataset.source == path


def test_written_file_is_what_insightface_loads(tmp_path):
    path = tmp_path / "set.bin"
    write_bin(path, IMAGES, FLAGS)
    data = path.read_bytes()
    assert data[:2] == b"\x80\x04"  # protocol 4
    bins, issame = pickle.loads(data, encoding="bytes")  # insightface's own loader
    assert bins == IMAGES and all(type(image) is bytes for image in bins)
    assert issame == FLAGS and all(type(flag) is bool for flag in issame)


def test_write_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "set.bin"
    write_bin(path, IMAGES, FLAGS)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("arcface.data.binset.pickle.dump", full_disk)
    with pytest.raises(OSError):
        write_bin(path, IMAGES[:2], FLAGS[:1])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.bin"]


@pytest.mark.parametrize(
    "images, flags",
    [(IMAGES[:3], FLAGS[:1]), ([b"", b"x"], [True]), (["text", b"x"], [True])],
    ids=["count", "empty", "str"],
)
def test_write_rejects_bad_input(tmp_path, images, flags):
    with pytest.raises(ValueError):
        write_bin(tmp_path / "set.bin", images, flags)
    assert not (tmp_path / "set.bin").exists()


def test_verification_set_checks_counts():
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        VerificationSet(IMAGES[:3], [True])


# --------------------------------------------------------------------- layouts other writers use


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("column", [True, False], ids=["n_by_1", "flat"])
def test_numpy_arrays_load(tmp_path, protocol, column):
    """insightface-style files hold np.uint8 arrays, (n, 1) or (n,), at any pickle protocol."""
    arrays = [np.frombuffer(image, dtype=np.uint8) for image in IMAGES]
    # Read-only (n, 1) views and writable flat copies: protocol 5 writes them as bytes and bytearray.
    arrays = [array.reshape(-1, 1) if column else array.copy() for array in arrays]
    path = tmp_path / "numpy.bin"
    path.write_bytes(pickle.dumps((arrays, FLAGS), protocol=protocol))
    dataset = read_bin(path)
    assert dataset.images == IMAGES
    assert dataset.issame == FLAGS


class _Ops:
    """Hand-written pickle opcodes, for the layouts Python 3's pickler no longer writes (Python 2 str)."""

    @staticmethod
    def string(data: bytes) -> bytes:  # BINSTRING: a Python 2 str
        return b"T" + struct.pack("<i", len(data)) + data

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    @staticmethod
    def int4(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    @classmethod
    def py2_array(cls, data: bytes) -> bytes:
        """np.frombuffer(data, uint8).reshape(-1, 1) as numpy 1.x under Python 2 pickles it."""
        dtype = (
            cls.glob("numpy", "dtype") + cls.string(b"u1") + b"K\x00K\x01\x87R"
            + b"(K\x03" + cls.string(b"|") + b"NNN" + cls.int4(-1) + cls.int4(-1) + b"K\x00tb"
        )
        return (
            cls.glob("numpy.core.multiarray", "_reconstruct") + cls.glob("numpy", "ndarray")
            + b"K\x00\x85" + cls.string(b"b") + b"\x87R"
            + b"(K\x01" + cls.int4(len(data)) + b"K\x01\x86" + dtype + b"\x89" + cls.string(data) + b"tb"
        )

    @classmethod
    def py2_bin(cls, items: list[bytes], flags: list[bool]) -> bytes:
        """A protocol 2 pickle of (items, flags); items are already-encoded opcodes."""
        body = b"".join(items)
        flag_ops = b"".join(b"\x88" if flag else b"\x89" for flag in flags)
        return b"\x80\x02](" + body + b"e](" + flag_ops + b"e\x86."


@pytest.mark.parametrize("as_arrays", [False, True], ids=["str", "numpy"])
def test_python2_file_loads(tmp_path, as_arrays):
    encode = _Ops.py2_array if as_arrays else _Ops.string
    path = tmp_path / "py2.bin"
    path.write_bytes(_Ops.py2_bin([encode(image) for image in IMAGES], FLAGS))
    pickle.loads(path.read_bytes(), encoding="bytes")  # the crafted file is a valid pickle
    dataset = read_bin(path)
    assert dataset.images == IMAGES
    assert dataset.issame == FLAGS


@pytest.mark.parametrize("dtype", [np.float32, np.int16, object])
def test_numpy_arrays_of_other_dtypes_refused(tmp_path, dtype):
    arrays = [np.frombuffer(image, dtype=np.uint8).astype(dtype) for image in IMAGES[:2]]
    path = tmp_path / "wrong.bin"
    path.write_bytes(pickle.dumps((arrays, [True]), protocol=3))
    with pytest.raises(DataError, match=r"wrong\.bin: image 0 is a numpy array of dtype"):
        read_bin(path)


# ----------------------------------------------------------------------------- malicious files


def _evil(function, *args):
    class Evil:
        def __reduce__(self):
            return function, args

    return Evil()


def _payloads(marker):
    """(name of the refused global, pickle) for payloads that would create ``marker`` if run."""
    touch = f"open({str(marker)!r}, 'w').close()"
    runstring = _Ops.glob("numpy.testing._private.utils", "runstring")
    yield f"{os.system.__module__}.system", pickle.dumps(
        ([_evil(os.system, f"touch '{marker}'"), IMAGES[0]], [True]), protocol=0
    )
    yield "builtins.eval", pickle.dumps(([_evil(builtins.eval, touch), IMAGES[0]], [True]), protocol=4)
    yield "builtins.exec", pickle.dumps(([IMAGES[0], _evil(builtins.exec, touch)], [True]), protocol=3)
    yield "subprocess.Popen", pickle.dumps(
        ([IMAGES[0], _evil(subprocess.Popen, ["touch", str(marker)])], [True]), protocol=5
    )
    # Python 2 spelling (Python 3 writes it at protocols 0-2): reported as written in the file.
    yield "__builtin__.eval", b"\x80\x02" + _Ops.glob("__builtin__", "eval") + _Ops.string(touch.encode()) + b"\x85R."
    # Names inside numpy, which the loader does trust a little, must be exact too.
    yield "numpy.load", b"\x80\x02" + _Ops.glob("numpy", "load") + _Ops.string(str(marker).encode()) + b"\x85R."
    yield "numpy.testing._private.utils.runstring", (
        b"\x80\x02" + runstring + _Ops.string(touch.encode()) + b"}\x86R."
    )
    yield "numpy.core.multiarray.scalar", b"\x80\x02" + _Ops.glob("numpy.core.multiarray", "scalar") + b")R."


@pytest.mark.parametrize(
    "name", ["builtins.eval", "builtins.exec", "__builtin__.eval", "numpy.testing._private.utils.runstring"]
)
def test_payloads_are_live(tmp_path, name):
    """The in-process payloads really run under plain pickle, so the refusals below test something."""
    marker = tmp_path / "MARKER"
    pickle.loads(dict(_payloads(marker))[name], encoding="bytes")
    assert marker.exists()


@pytest.mark.parametrize("index", range(8))
def test_malicious_globals_refused_without_running(tmp_path, monkeypatch, index):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    name, payload = list(_payloads(marker))[index]
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(DataError) as raised:
        read_bin(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"refuses to load global '{name}'" in message
    assert "malicious" in message
    assert not marker.exists()


def test_persistent_ids_refused(tmp_path):
    class Persisting(pickle.Pickler):
        def persistent_id(self, obj):
            return "outside" if obj == IMAGES[1] else None

    for protocol in (0, 4):
        buffer = io.BytesIO()
        Persisting(buffer, protocol=protocol).dump((IMAGES[:2], [True]))
        path = tmp_path / "persistent.bin"
        path.write_bytes(buffer.getvalue())
        with pytest.raises(DataError, match="refuses persistent id 'outside'"):
            read_bin(path)


def test_allowed_globals_cannot_be_modified_or_misused(tmp_path):
    # BUILD on an allowed global would set attributes on a shared stand-in: refused.
    path = tmp_path / "build.bin"
    path.write_bytes(b"\x80\x02" + _Ops.glob("numpy", "dtype") + b"N}X\x08\x00\x00\x00functionK\x01s\x86b.")
    with pytest.raises(DataError, match="BUILD on the global 'numpy.dtype'"):
        read_bin(path)
    # _reconstruct is only for ndarray; _codecs.encode only for latin-1.
    path.write_bytes(
        b"\x80\x02" + _Ops.glob("numpy.core.multiarray", "_reconstruct") + _Ops.glob("numpy", "dtype")
        + b"K\x00\x85" + _Ops.string(b"b") + b"\x87R."
    )
    with pytest.raises(DataError, match="other than numpy.ndarray"):
        read_bin(path)
    path.write_bytes(b"\x80\x02" + _Ops.glob("_codecs", "encode") + b"X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match="only allowed for latin-1"):
        read_bin(path)
    # And the stand-ins still work afterwards.
    write_bin(path, IMAGES, FLAGS, protocol=2)
    assert read_bin(path).images == IMAGES


# ------------------------------------------------------------------------------- corrupt files


def test_truncated_files_refused(tmp_path):
    data = shared_path(SMALL_LFW).read_bytes()
    path = tmp_path / "cut.bin"
    for size in (1, 2, 70, 150, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(DataError, match=r"cut\.bin: (truncated|not a valid pickle)"):
            read_bin(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a pickle\n", IMAGES[0], b"\x80\x04\x8e" + struct.pack("<Q", 2**62)],
    ids=["empty", "text", "jpeg", "huge-length"],
)
def test_not_a_pickle_refused(tmp_path, content):
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"junk\.bin: "):
        read_bin(path)


def test_trailing_bytes_are_reported(tmp_path, caplog):
    path = tmp_path / "joined.bin"
    write_bin(path, IMAGES, FLAGS)
    with caplog.at_level("WARNING", logger="arcface.data.binset"):
        read_bin(path)
        assert not caplog.records
        path.write_bytes(path.read_bytes() + b"garbage")
        assert read_bin(path).images == IMAGES
    assert "7 bytes after the end of the pickle" in caplog.text


def test_missing_file_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_bin(tmp_path / "absent.bin")


@pytest.mark.parametrize(
    "content, message",
    [
        ((IMAGES[:2], [True], "extra"), "tuple of length 3"),
        ({"images": IMAGES[:2]}, "holds a dict"),
        ((IMAGES[:3], [True]), "3 images for 1 issame flags"),
        ((IMAGES[:4], [True]), "4 images for 1 issame flags"),
        ((b"".join(IMAGES[:2]), [True]), "images is a bytes"),
        ((IMAGES[:2], True), "issame_list is a bool"),
        (([IMAGES[0], 7], [True]), "image 1 is a int"),
        (([IMAGES[0], "text"], [True]), "image 1 is a str"),
        (([IMAGES[0], b""], [True]), "image 1 is empty"),
        ((IMAGES[:4], [True, "yes"]), "issame flag 1 is 'yes'"),
        ((IMAGES[:4], [True, 2]), "issame flag 1 is 2"),
    ],
)
def test_wrong_structure_refused(tmp_path, content, message):
    path = tmp_path / "shape.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError) as raised:
        read_bin(path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)


def test_bad_numpy_shapes_refused(tmp_path):
    grid = np.frombuffer(IMAGES[0][:64], dtype=np.uint8).reshape(8, 8)
    path = tmp_path / "grid.bin"
    path.write_bytes(pickle.dumps(([grid, IMAGES[1]], [False]), protocol=3))
    with pytest.raises(DataError, match=r"image 0 has shape \(8, 8\)"):
        read_bin(path)


# ------------------------------------------------------------------------------ bin_from_pairs


def test_bin_from_pairs_keeps_file_bytes(tmp_path):
    root = tmp_path / "images"
    for person in ("Ann", "Bob"):
        (root / person).mkdir(parents=True)
    names = ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg"]
    for name, image in zip(names, IMAGES):
        (root / name).write_bytes(image)
    pairs = [Pair(names[0], names[1], True, 0), Pair(names[0], names[2], False, 1)]
    out = tmp_path / "out.bin"
    written = bin_from_pairs(pairs, out, image_root=root)
    dataset = read_bin(out)
    assert dataset.images == [IMAGES[0], IMAGES[1], IMAGES[0], IMAGES[2]]
    assert dataset.issame == [True, False]
    assert written.images == dataset.images and written.issame == dataset.issame

    with pytest.raises(DataError, match=r"Bob_0002\.jpg: cannot read image of pair 1"):
        bin_from_pairs([pairs[0], Pair(names[0], "Bob/Bob_0002.jpg", False)], tmp_path / "bad.bin", root)
    assert not (tmp_path / "bad.bin").exists()


def test_bin_from_real_lfw_pairs(tmp_path):
    pairs_file = shared_path("data/lfw_deepfunneled/pairsDevTest.txt")
    root = shared_path("data/lfw_deepfunneled/images")
    pairs = read_pairs(pairs_file)
    chosen = pairs[:3] + pairs[-3:]
    out = tmp_path / "lfw_dev.bin"
    bin_from_pairs(chosen, out, image_root=root)
    dataset = read_bin(out)
    assert dataset.issame == [True] * 3 + [False] * 3
    expected = [(root / name).read_bytes() for pair in chosen for name in (pair.left, pair.right)]
    assert dataset.images == expected
    with Image.open(io.BytesIO(dataset.images[0])) as decoded:
        assert decoded.size == (250, 250)
