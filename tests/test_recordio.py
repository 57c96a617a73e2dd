"""RecordIO reader/writer: real im2rec files, hand-built split records, insightface layout,
folder packing, corrupt inputs, and sharing a reader with DataLoader workers."""

from __future__ import annotations

import io
import logging
import pickle
import random
import shutil
import struct
from pathlib import Path

import pytest
from PIL import Image

from arcface.data.errors import DataError
from arcface.data.pack import pack_folder, sniff_extension, unpack_records
from arcface.data.face_records import FaceRecordFile, _check_float32_keys, write_face_records
from arcface.data.recordio import MAGIC, RecordHeader, RecordReader, RecordWriter, pack_record, unpack_record
from conftest import shared_path

MAGIC_BYTES = struct.pack("<I", MAGIC)

# (rec file under fixtures/recordio, its .lst, images, classes, property size or None)
FIXTURES = [
    ("adaface_fork_8faces/train.rec", "adaface_fork_8faces/train.lst", 8, 2, None),
    ("faceid_processing_testing/testing.rec", "faceid_processing_testing/testing.lst", 217, 25, (112, 112)),
]


def _read_lst(path: Path) -> list[tuple[int, int]]:
    """``(key, label)`` per line of an im2rec .lst (``key<TAB>label<TAB>relpath``)."""
    rows = []
    for line in path.read_text().splitlines():
        key, label, _ = line.split("\t")
        rows.append((int(key), int(float(label))))
    return rows


def _jpeg(seed: int, size: int = 16) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    image.putpixel((rng.randrange(size), rng.randrange(size)), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _chunk(cflag: int, data: bytes) -> bytes:
    """One chunk written by hand from the format description: magic, lrec, data, zero padding."""
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def _chunk_flags(rec: Path) -> list[int]:
    """Continuation flags of every chunk of a .rec, walked by hand."""
    data, position, flags = rec.read_bytes(), 0, []
    while position < len(data):
        magic, lrec = struct.unpack_from("<II", data, position)
        assert magic == 0xCED7230A
        length = lrec & ((1 << 29) - 1)
        flags.append(lrec >> 29)
        position += 8 + length + (-length % 4)
    assert position == len(data)
    return flags


# --------------------------------------------------------------------------- real im2rec files


@pytest.mark.parametrize("rec_name, lst_name, count, classes, size", FIXTURES)
def test_fixture_im2rec_files_read(rec_name, lst_name, count, classes, size):
    rec = shared_path(f"fixtures/recordio/{rec_name}")
    lst = _read_lst(shared_path(f"fixtures/recordio/{lst_name}"))
    with FaceRecordFile(rec) as faces:
        assert not faces.has_header
        assert faces.identity_ranges is None
        assert len(faces) == count == len(faces.reader)
        assert faces.image_keys == [key for key, _ in lst]
        assert faces.labels == [label for _, label in lst]
        assert faces.num_classes == classes == len(set(faces.labels))
        assert faces.image_size == size
        for key, label in lst:
            assert faces.label_of(key) == label
            image = Image.open(io.BytesIO(faces.image_bytes(key)))
            assert image.format == "JPEG"
            assert image.convert("RGB").size == (112, 112) and image.mode == "RGB"


@pytest.mark.parametrize("rec_name", [rec for rec, *_ in FIXTURES])
def test_sequential_iteration_equals_random_access(rec_name):
    rec = shared_path(f"fixtures/recordio/{rec_name}")
    with RecordReader(rec) as reader:
        sequential = list(reader)
        assert [offset for offset, _ in sequential] == [reader.offset_of(key) for key in reader.keys]
        assert sequential[-1][0] < rec.stat().st_size
        for key, (offset, content) in zip(reader.keys, sequential):
            assert reader.read(key) == content
            header, _ = unpack_record(content)
            assert header.id == key and header.flag == 0
            assert reader.read_header(key) == header
        next_offset = 0
        for offset, content in sequential:
            assert offset == next_offset
            read, next_offset = reader.read_at(offset)
            assert read == content
        assert next_offset == rec.stat().st_size


def test_fixture_without_index_is_scanned(tmp_path):
    source = shared_path("fixtures/recordio/adaface_fork_8faces/train.rec")
    rec = tmp_path / "train.rec"
    shutil.copyfile(source, rec)
    with RecordReader(rec) as scanned, RecordReader(source) as indexed:
        assert scanned.idx_path is None
        assert scanned.keys == list(range(8))
        # im2rec ids equal keys, so scanned positions map to the indexed keys via the header id.
        for position in scanned.keys:
            content = scanned.read(position)
            assert indexed.read(unpack_record(content)[0].id) == content


# --------------------------------------------------------------------------- record content


def test_record_header_pack_unpack():
    header = RecordHeader.of((3.0, 1.5, -2.25), id=7, id2=2**64 - 1)
    assert header.flag == 3
    content = pack_record(header, b"payload")
    assert len(content) == 24 + 12 + 7
    assert unpack_record(content) == (header, b"payload")
    scalar = RecordHeader(0, 4, id=1)
    assert unpack_record(pack_record(scalar)) == (RecordHeader(0, 4.0, 1, 0), b"")
    assert struct.unpack_from("<IfQQ", pack_record(header)) == (3, 0.0, 7, 2**64 - 1)
    with pytest.raises(ValueError, match="flag"):
        RecordHeader(0, (1.0, 2.0))
    with pytest.raises(ValueError, match="flag"):
        RecordHeader(2, 1.0)
    with pytest.raises(ValueError, match="uint64"):
        pack_record(RecordHeader.of(1.0, id=-1))
    with pytest.raises(DataError, match="k9: record is 10 bytes, shorter than the 24-byte"):
        unpack_record(b"\0" * 10, "k9")
    with pytest.raises(DataError, match="announces 5 float labels"):
        unpack_record(struct.pack("<IfQQ", 5, 0.0, 0, 0) + b"\0" * 8)


# --------------------------------------------------------------------------- writer + reader


def test_writer_reader_round_trip_with_magic_words(tmp_path):
    rng = random.Random(0)
    payloads = [
        b"",
        MAGIC_BYTES,  # aligned at the start of the payload (content offset 24)
        b"ab" + MAGIC_BYTES + b"cd",  # unaligned: must not split
        MAGIC_BYTES * 3,  # consecutive aligned magic words
        bytes(rng.randrange(256) for _ in range(1001)) + MAGIC_BYTES,  # unaligned at the end
        bytes(rng.randrange(256) for _ in range(1000)) + MAGIC_BYTES,  # aligned at the very end
        b"x" * 4 + MAGIC_BYTES + b"y" * 9 + MAGIC_BYTES + b"z" * 3 + MAGIC_BYTES + b"w",
    ] + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))) for _ in range(20)]
    contents = {}
    for index, payload in enumerate(payloads):
        label = (float(index), 0.5, -1.0) if index % 3 == 0 else float(index)
        contents[1000 - index] = pack_record(RecordHeader.of(label, id=index, id2=index * 7), payload)
    contents[5000] = MAGIC_BYTES * 7  # a record that is nothing but magic words (no IRHeader)
    rec = tmp_path / "out.rec"
    with RecordWriter(rec) as writer:
        for key, content in contents.items():
            writer.write(key, content)
    assert not list(tmp_path.glob("*.partial"))
    flags = _chunk_flags(rec)
    assert 1 in flags and 2 in flags and 3 in flags
    with RecordReader(rec) as reader:
        assert reader.keys == list(contents)
        for key, content in contents.items():
            assert reader.read(key) == content
        assert [content for _, content in reader] == list(contents.values())
        header, payload = unpack_record(reader.read(1000 - 6))
        assert payload == payloads[6] and header.label == (6.0, 0.5, -1.0) and header.id2 == 42
        assert unpack_record(reader.read(1000 - 2))[0] == RecordHeader(0, 2.0, 2, 14)
    index_lines = (tmp_path / "out.idx").read_text().splitlines()
    assert index_lines[0] == "1000\t0" and len(index_lines) == len(contents)


def test_hand_built_split_record_is_read(tmp_path):
    # Content = IRHeader (24 bytes) + "ABCD" + MAGIC + "EFGH" + MAGIC + "IJ": magic words at the
    # aligned content offsets 28 and 36. The writer drops them and flags the parts 1, 2, 3.
    header = struct.pack("<IfQQ", 0, 3.0, 11, 0)
    content = header + b"ABCD" + MAGIC_BYTES + b"EFGH" + MAGIC_BYTES + b"IJ"
    second = struct.pack("<IfQQ", 0, 4.0, 12, 0) + b"xyz"
    data = (
        _chunk(1, header + b"ABCD")
        + _chunk(2, b"EFGH")
        + _chunk(3, b"IJ")
        + _chunk(0, second)
    )
    second_offset = len(data) - len(_chunk(0, second))
    rec = tmp_path / "hand.rec"
    rec.write_bytes(data)
    (tmp_path / "hand.idx").write_text(f"11\t0\n12\t{second_offset}\n")
    with RecordReader(rec) as reader:
        assert reader.read(11) == content
        assert reader.read_at(0) == (content, second_offset)
        assert reader.read(12) == second
        assert unpack_record(reader.read(11)) == (RecordHeader(0, 3.0, 11, 0), content[24:])
        assert list(reader) == [(0, content), (second_offset, second)]
        assert reader.read_header(11).id == 11
    # Our writer produces exactly the hand-built bytes.
    ours = tmp_path / "ours.rec"
    with RecordWriter(ours) as writer:
        writer.write(11, content)
        writer.write(12, second)
    assert ours.read_bytes() == data


def test_interrupted_writer_leaves_no_rec(tmp_path):
    rec = tmp_path / "out.rec"
    with pytest.raises(RuntimeError):
        with RecordWriter(rec) as writer:
            writer.write(0, b"x" * 30)
            assert (tmp_path / "out.rec.partial").exists() and not rec.exists()
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with RecordWriter(rec) as writer:
        writer.write(3, b"abc")
        with pytest.raises(ValueError, match="key 3 was already written"):
            writer.write(3, b"again")
    assert RecordReader(rec).read(3) == b"abc"


# --------------------------------------------------------------------------- insightface layout


def _samples(per_class: list[int], seed: int = 0) -> list[tuple[bytes, int]]:
    samples = [
        (_jpeg(seed * 1000 + 10 * label + i), label) for label, n in enumerate(per_class) for i in range(n)
    ]
    random.Random(seed).shuffle(samples)
    return samples


def test_write_face_records_insightface_layout(tmp_path):
    samples = _samples([3, 1, 4, 2])
    rec = tmp_path / "train.rec"
    assert write_face_records(rec, samples, image_size=(16, 16)) == 10
    assert (tmp_path / "property").read_text() == "4,16,16"
    with FaceRecordFile(rec) as faces:
        assert faces.has_header and faces.num_classes == 4 and faces.image_size == (16, 16)
        assert faces.image_keys == list(range(1, 11))
        assert faces.labels == [0, 0, 0, 1, 2, 2, 2, 2, 3, 3]
        assert faces.identity_ranges == [(1, 4), (4, 5), (5, 9), (9, 11)]
        # Grouped by label, stable: within a class, images keep their input order.
        expected = [data for label in range(4) for data, lab in samples if lab == label]
        assert [faces.image_bytes(key) for key in faces.image_keys] == expected
        for key, label in zip(faces.image_keys, faces.labels):
            assert faces.label_of(key) == label
            # Labels from identity records agree with each image's own header.
            assert faces.reader.read_header(key) == RecordHeader(0, float(label), key, 0)
        assert faces.reader.read_header(0).label == (11.0, 15.0)
        assert faces.reader.read_header(13).label == (5.0, 9.0)
        with pytest.raises(DataError, match="key 12 is not an image record"):
            faces.image_bytes(12)
        with pytest.raises(DataError, match="key 0 is not an image record"):
            faces.label_of(0)


def test_header_layout_with_bad_identity_records_falls_back_to_image_headers(tmp_path, caplog):
    rec = tmp_path / "train.rec"
    with RecordWriter(rec) as writer:
        writer.write(0, pack_record(RecordHeader.of((4, 6))))
        for key, label in [(1, 0), (2, 1), (3, 1)]:
            writer.write(key, pack_record(RecordHeader.of((float(label), 9.0), id=key), b"img%d" % key))
        writer.write(4, pack_record(RecordHeader.of((1, 3))))
        writer.write(5, pack_record(RecordHeader.of((2, 4))))  # overlaps the first range
    with caplog.at_level(logging.WARNING), FaceRecordFile(rec) as faces:
        assert faces.has_header and faces.identity_ranges is None
        assert faces.image_keys == [1, 2, 3] and faces.labels == [0, 1, 1] and faces.num_classes == 2
        assert faces.image_bytes(3) == b"img3"
    assert "identity record 5 has range [2.0, 4.0)" in caplog.text


def test_write_face_records_refuses_bad_labels(tmp_path):
    with pytest.raises(DataError, match="class 1 has no image"):
        write_face_records(tmp_path / "a.rec", [(b"x", 0), (b"y", 2)])
    with pytest.raises(DataError, match="sample 1 has label -1"):
        write_face_records(tmp_path / "a.rec", [(b"x", 0), (b"y", -1)])
    with pytest.raises(DataError, match="sample 0 has label 0.5"):
        write_face_records(tmp_path / "a.rec", [(b"x", 0.5)])
    with pytest.raises(DataError, match="no images"):
        write_face_records(tmp_path / "a.rec", [])
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    _check_float32_keys(2**24 - 2, 1, "ok.rec")  # keys up to 2**24 are exact
    with pytest.raises(DataError, match="float32, exact only up to 16777216"):
        _check_float32_keys(2**24 - 1, 1, "big.rec")


def test_property_disagreeing_with_labels_is_an_error(tmp_path):
    rec = tmp_path / "train.rec"
    write_face_records(rec, _samples([1, 2, 1]))
    (tmp_path / "property").write_text("2,112,112\n")
    with pytest.raises(DataError, match="property: says 2 classes but .*train.rec key 4 has label 2"):
        FaceRecordFile(rec)
    (tmp_path / "property").write_text("4,112,112\n")
    with pytest.raises(DataError, match="property: says 4 classes but .*train.rec has 3 identity records"):
        FaceRecordFile(rec)
    (tmp_path / "property").write_text("112x112")
    with pytest.raises(DataError, match=r"property: expected 'num_classes,height,width'"):
        FaceRecordFile(rec)
    (tmp_path / "property").unlink()
    assert FaceRecordFile(rec).num_classes == 3


def test_missing_property_is_fine_for_im2rec(tmp_path):
    rec = tmp_path / "plain.rec"
    with RecordWriter(rec) as writer:
        for key, label in [(5, 1), (2, 0), (9, 1)]:
            writer.write(key, pack_record(RecordHeader.of(float(label), id=key), _jpeg(key)))
    with FaceRecordFile(rec) as faces:
        assert not faces.has_header and faces.image_size is None
        assert faces.image_keys == [5, 2, 9] and faces.labels == [1, 0, 1] and faces.num_classes == 2
    (tmp_path / "property").write_text("1,112,112")
    with pytest.raises(DataError, match="says 1 classes but .*plain.rec key 5 has label 1"):
        FaceRecordFile(rec)


# --------------------------------------------------------------------------- folders


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (seed % 256, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pack_folder_unpack_round_trip(tmp_path, caplog):
    root = tmp_path / "faces"
    files = {
        "bob": {"b.jpg": _jpeg(1), "a.JPEG": _jpeg(2), "notes.txt": b"not an image"},
        "alice": {"2.png": _png(3), "1.jpg": _jpeg(4)},
        "carol": {"x.jpg": _jpeg(5)},
    }
    for identity, images in files.items():
        (root / identity).mkdir(parents=True)
        for name, data in images.items():
            (root / identity / name).write_bytes(data)
    with caplog.at_level(logging.WARNING):
        counts = pack_folder(root, tmp_path / "rec" / "train.rec")
    assert counts == {"images": 5, "classes": 3, "skipped": 1}
    assert "notes.txt" in caplog.text
    assert (tmp_path / "rec" / "property").read_text() == "3,16,16"
    with FaceRecordFile(tmp_path / "rec" / "train.rec") as faces:
        assert faces.labels == [0, 0, 1, 1, 2]  # alice, bob, carol
        assert faces.image_bytes(1) == files["alice"]["1.jpg"]
        assert faces.image_bytes(4) == files["bob"]["b.jpg"]
    out = tmp_path / "out"
    counts = unpack_records(tmp_path / "rec" / "train.rec", out)
    assert counts == {"images": 5, "classes": 3, "jpg": 4, "png": 1, "bin": 0}
    for label, identity in enumerate(sorted(files)):
        unpacked = sorted((out / str(label)).iterdir())
        originals = [data for name, data in sorted(files[identity].items()) if not name.endswith(".txt")]
        assert [path.read_bytes() for path in unpacked] == originals
    assert sorted(path.name for path in (out / "0").iterdir()) == ["1.jpg", "2.png"]


def test_pack_fixture_images_round_trip(tmp_path):
    rec = shared_path("fixtures/recordio/adaface_fork_8faces/train.rec")
    unpack_records(rec, tmp_path / "folder")
    counts = pack_folder(tmp_path / "folder", tmp_path / "packed" / "train.rec")
    assert counts == {"images": 8, "classes": 2, "skipped": 0}
    assert (tmp_path / "packed" / "property").read_text() == "2,112,112"
    with FaceRecordFile(rec) as original, FaceRecordFile(tmp_path / "packed" / "train.rec") as packed:
        def pairs(faces):
            return sorted((label, faces.image_bytes(key)) for key, label in zip(faces.image_keys, faces.labels))

        assert pairs(original) == pairs(packed)


def test_pack_folder_errors(tmp_path):
    root = tmp_path / "faces"
    (root / "anna").mkdir(parents=True)
    (root / "anna" / "1.jpg").write_bytes(_jpeg(0))
    (root / "ben").mkdir()
    (root / "ben" / "readme.txt").write_text("no faces here")
    with pytest.raises(DataError, match=r"faces/ben: identity folder has no image files"):
        pack_folder(root, tmp_path / "out.rec")
    assert not (tmp_path / "out.rec").exists()
    (root / "ben" / "1.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"ben/1.jpg: not a readable image"):
        pack_folder(root, tmp_path / "out.rec")
    assert not list(tmp_path.glob("out*"))
    with pytest.raises(DataError, match="no identity folders"):
        pack_folder(tmp_path / "faces" / "anna", tmp_path / "out.rec")


def test_sniff_extension():
    assert sniff_extension(_jpeg(0)) == ".jpg"
    assert sniff_extension(_png(0)) == ".png"
    assert sniff_extension(b"BM....") == ".bin"
    assert sniff_extension(b"") == ".bin"


# --------------------------------------------------------------------------- corrupt inputs


@pytest.fixture
def small_rec(tmp_path) -> Path:
    """Three records (keys 0, 1, 2) of 100 payload bytes each, written by our writer."""
    rec = tmp_path / "train.rec"
    with RecordWriter(rec) as writer:
        for key in range(3):
            writer.write(key, pack_record(RecordHeader.of(float(key), id=key), bytes([key]) * 100))
    return rec


def test_truncated_rec(small_rec):
    data = small_rec.read_bytes()
    last = RecordReader(small_rec).offset_of(2)
    small_rec.write_bytes(data[: last + 50])  # cut in the middle of the last record
    with RecordReader(small_rec) as reader:
        assert reader.read(1)[24:] == b"\1" * 100
        with pytest.raises(DataError, match=rf"train.rec: record at offset {last}: chunk "
                                            rf"declares 124 bytes but the file ends at byte {last + 50}"):
            reader.read(2)
        with pytest.raises(DataError, match="truncated"):
            list(reader)
    small_rec.write_bytes(data[: last + 5])  # cut inside the chunk header
    with pytest.raises(DataError, match="is past the end|truncated"):
        with RecordReader(small_rec) as reader:
            reader.read(2)


def test_truncated_split_record(tmp_path):
    rec = tmp_path / "split.rec"
    with RecordWriter(rec) as writer:
        writer.write(0, b"abcd" + MAGIC_BYTES + b"efgh")
    rec.write_bytes(rec.read_bytes()[:12])  # only the first part survives
    message = r"split.rec: record at offset 0, chunk at offset 12: file ends at byte 12 inside the record \(its last"
    with pytest.raises(DataError, match=message):
        RecordReader(rec).read(0)
    rec.write_bytes(_chunk(2, b"efgh"))
    (tmp_path / "split.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match="expected a whole record or a first part but found a middle part"):
        RecordReader(rec).read(0)


def test_index_offset_past_end(small_rec):
    idx = small_rec.with_suffix(".idx")
    size = small_rec.stat().st_size
    idx.write_text(idx.read_text() + f"7\t{size + 400}\n")
    with pytest.raises(DataError, match=rf"train.idx: line 4: offset {size + 400} of key 7 is past the end"):
        RecordReader(small_rec)


def test_bad_magic(small_rec):
    reader = RecordReader(small_rec)
    offset = reader.offset_of(1)
    data = bytearray(small_rec.read_bytes())
    data[offset:offset + 4] = b"\0\0\0\0"
    small_rec.write_bytes(bytes(data))
    with RecordReader(small_rec) as reader:
        with pytest.raises(DataError, match=rf"train.rec: record at offset {offset}: bad magic 0x00000000 "
                                            r"\(expected 0xced7230a\); the file is corrupt or not RecordIO"):
            reader.read(1)
        with pytest.raises(DataError, match="bad magic"):
            list(reader)
        with pytest.raises(DataError, match="bad magic"):
            reader.read_header(1)
    small_rec.write_bytes(b"GIF89a" + bytes(100))
    small_rec.with_suffix(".idx").unlink()
    with pytest.raises(DataError, match="not RecordIO"):
        FaceRecordFile(small_rec)


@pytest.mark.parametrize("line", ["3 x", "3", "1\t2\t3", "\xff\xfe"])
def test_malformed_index_line(small_rec, line):
    idx = small_rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    idx.write_bytes(("\n".join(lines[:2] + [line]) + "\n").encode("utf-8", errors="surrogateescape"))
    with pytest.raises(DataError, match="train.idx: line 3: expected 'key<TAB>offset'"):
        RecordReader(small_rec)


def test_missing_files_and_unknown_key(small_rec, tmp_path):
    with pytest.raises(DataError, match="nothere.rec: no such RecordIO file"):
        RecordReader(tmp_path / "nothere.rec")
    with pytest.raises(DataError, match="other.idx: no such index file"):
        RecordReader(small_rec, tmp_path / "other.idx")
    with RecordReader(small_rec) as reader:
        with pytest.raises(DataError, match="train.rec: no record with key 17 in .*train.idx"):
            reader.read(17)
    idx = small_rec.with_suffix(".idx")
    idx.write_text(idx.read_text() + "1\t0\n")
    with pytest.raises(DataError, match="line 4: key 1 appears twice"):
        RecordReader(small_rec)


# --------------------------------------------------------------------------- sharing with workers


def test_reader_pickles_without_its_handle(small_rec):
    reader = RecordReader(small_rec)
    expected = reader.read(2)  # opens the handle
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    assert clone.read(2) == expected and clone.keys == reader.keys
    faces = pickle.loads(pickle.dumps(FaceRecordFile(small_rec)))
    assert faces.image_bytes(1) == b"\1" * 100


class _FaceBytes:
    """A tiny map-style dataset: (key, label, image bytes, worker pid)."""

    def __init__(self, faces: FaceRecordFile) -> None:
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int):
        import os

        key = self.faces.image_keys[index]
        return key, self.faces.label_of(key), self.faces.image_bytes(key), os.getpid()


@pytest.mark.slow
def test_dataloader_workers_read_the_same_bytes():
    import os

    import torch

    faces = FaceRecordFile(shared_path("fixtures/recordio/faceid_processing_testing/testing.rec"))
    expected = {key: faces.image_bytes(key) for key in faces.image_keys}  # parent's handle is open
    loader = torch.utils.data.DataLoader(_FaceBytes(faces), batch_size=None, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    seen, pids = {}, set()
    for key, label, data, pid in loader:
        seen[int(key)] = data
        pids.add(int(pid))
        assert int(label) == faces.label_of(int(key))
    assert seen == expected
    assert os.getpid() not in pids and len(pids) == 2
    assert faces.image_bytes(faces.image_keys[0]) == expected[faces.image_keys[0]]
