"""LFW protocol files: the real pairs and people files against LFW's documented counts and against
each other, stratified folds, our TSV round trip, and malformed files."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from arcface.data import DataError
from arcface.data.protocols import (
    PAIRS_HEADER,
    Pair,
    read_pairs,
    read_people,
    read_people_folds,
    stratified_folds,
    write_pairs,
)
from conftest import shared_path

LFW = "data/lfw_deepfunneled"


def _lfw(name: str):
    return shared_path(f"{LFW}/{name}")


def _names(pair: Pair) -> set[str]:
    return {pair.left.split("/")[0], pair.right.split("/")[0]}


def _simple_people(path) -> dict[str, int]:
    """Every ``name count`` line of a people file: an independent reading that ignores the structure."""
    rows = [line.split("\t") for line in path.read_text().split("\n") if "\t" in line]
    return {name: int(count) for name, count in rows}


# ------------------------------------------------------------------------------- real LFW pairs


def test_view2_pairs():
    pairs = read_pairs(_lfw("pairs.txt"), image_root=_lfw("images"))  # every image exists
    assert len(pairs) == 6000
    per_fold = Counter((pair.fold, pair.same) for pair in pairs)
    assert per_fold == {(fold, same): 300 for fold in range(10) for same in (True, False)}
    assert [pair.fold for pair in pairs] == sorted(pair.fold for pair in pairs)
    assert pairs[0] == Pair("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 0)
    assert all(pair.same == (len(_names(pair)) == 1) for pair in pairs)


def test_view2_pairs_stay_inside_their_people_fold():
    """LFW drew each fold's pairs from that fold's people only: ties read_pairs' folds to people.txt."""
    people = [{name for name, _ in fold} for fold in read_people_folds(_lfw("people.txt"))]
    for pair in read_pairs(_lfw("pairs.txt")):
        assert _names(pair) <= people[pair.fold]


@pytest.mark.parametrize(
    "name, people, per_class",
    [("pairsDevTrain.txt", "peopleDevTrain.txt", 1100), ("pairsDevTest.txt", "peopleDevTest.txt", 500)],
)
def test_view1_pairs(name, people, per_class):
    pairs = read_pairs(_lfw(name), image_root=_lfw("images"))
    assert len(pairs) == 2 * per_class
    assert [pair.same for pair in pairs] == [True] * per_class + [False] * per_class
    assert {pair.fold for pair in pairs} == {0}
    names = {name for name, _ in read_people(_lfw(people))}
    assert all(_names(pair) <= names for pair in pairs)


def test_stratified_folds_on_dev_test():
    pairs = read_pairs(_lfw("pairsDevTest.txt"))
    folds = stratified_folds(pairs)
    assert Counter(zip(folds, (pair.same for pair in pairs))) == {
        (fold, same): 50 for fold in range(10) for same in (True, False)
    }


# ------------------------------------------------------------------------------ real LFW people


@pytest.mark.parametrize("name", ["peopleDevTrain.txt", "peopleDevTest.txt"])
def test_view1_people(name):
    path = _lfw(name)
    people = read_people(path)
    lines = [line for line in path.read_text().split("\n") if line.strip()]
    assert len(people) == int(lines[0]) == len(lines) - 1
    assert dict(people) == _simple_people(path)
    assert len(read_people_folds(path)) == 1


def test_view2_people():
    path = _lfw("people.txt")
    folds = read_people_folds(path)
    lines = [line for line in path.read_text().split("\n") if line.strip()]
    count_lines = [int(line) for line in lines if "\t" not in line]
    assert len(folds) == count_lines[0]
    assert [len(fold) for fold in folds] == count_lines[1:]
    assert dict(read_people(path)) == _simple_people(path)


def test_people_files_agree_with_names_and_images():
    """people.txt and the two dev files each cover every LFW person once, with lfw-names' counts,
    which match the image folders."""
    names = dict(read_people(_lfw("lfw-names.txt")))  # headerless: one fold
    assert names == _simple_people(_lfw("lfw-names.txt"))
    view2 = read_people(_lfw("people.txt"))
    train, test = read_people(_lfw("peopleDevTrain.txt")), read_people(_lfw("peopleDevTest.txt"))
    assert len(view2) == len(names) and dict(view2) == names
    assert len(train) + len(test) == len(names) and dict(train + test) == names
    images = _lfw("images")
    assert {name: len(os.listdir(images / name)) for name in names} == names


# ------------------------------------------------------------------------------ stratified folds


def test_stratified_folds_uneven_counts_stay_balanced_and_in_order():
    pairs = [Pair(f"a{i}", f"b{i}", True) for i in range(7)] + [Pair(f"c{i}", f"d{i}", False) for i in range(5)]
    folds = stratified_folds(pairs, n_folds=3)
    same, different = folds[:7], folds[7:]
    assert same == sorted(same) and different == sorted(different)
    assert sorted(Counter(same).values()) == [2, 2, 3]
    assert sorted(Counter(different).values()) == [1, 2, 2]
    with pytest.raises(ValueError, match="only 5 different pairs"):
        stratified_folds(pairs, n_folds=6)


# -------------------------------------------------------------------------------- TSV round trip


def test_write_read_round_trip(tmp_path):
    pairs = [
        Pair("a/x 1.png", "b/ü.jpg", True, 0),
        Pair("deep/dir/c.jpg", "d.jpg", False, 3),
        Pair("e.jpg", "e.jpg", True, 12),
    ]
    path = tmp_path / "pairs.tsv"
    write_pairs(path, pairs)
    assert path.read_text(encoding="utf-8").split("\n")[0] == PAIRS_HEADER
    assert read_pairs(path) == pairs


def test_round_trip_of_lfw_pairs(tmp_path):
    pairs = read_pairs(_lfw("pairs.txt"))
    path = tmp_path / "lfw.tsv"
    write_pairs(path, pairs)
    assert read_pairs(path, image_root=_lfw("images")) == pairs


def test_write_refuses_unwritable_paths(tmp_path):
    with pytest.raises(ValueError, match="tab or newline"):
        write_pairs(tmp_path / "p.tsv", [Pair("a\tb.jpg", "c.jpg", True)])
    with pytest.raises(ValueError, match="fold"):
        write_pairs(tmp_path / "p.tsv", [Pair("a.jpg", "c.jpg", True, -1)])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ malformed files

VIEW2 = "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid\t1\t3\nCid\t2\tDan\t4\n"
VIEW1 = "1\nAnn\t1\t2\nAnn\t1\tBob\t1\n"


def test_small_files_parse(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(VIEW2)
    assert read_pairs(path, ext=".png") == [
        Pair("Ann/Ann_0001.png", "Ann/Ann_0002.png", True, 0),
        Pair("Ann/Ann_0001.png", "Bob/Bob_0001.png", False, 0),
        Pair("Cid/Cid_0001.png", "Cid/Cid_0003.png", True, 1),
        Pair("Cid/Cid_0002.png", "Dan/Dan_0004.png", False, 1),
    ]
    path.write_text(VIEW1.replace("\n", "\r\n") + "\n\n")  # CRLF and trailing blank lines are fine
    assert [pair.fold for pair in read_pairs(path)] == [0, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        (VIEW2.replace("Ann\t1\t2", "Ann\t1\tBob\t2"), "line 2: expected a matched pair"),
        (VIEW2.replace("Cid\t2\tDan\t4", "Cid\t2\t4"), "line 5: expected a mismatched pair"),
        (VIEW2.replace("Cid\t1\t3", "Cid\tone\t3"), "line 4: an image number must be an integer >= 1, got 'one'"),
        (VIEW2.replace("Cid\t1\t3", "Cid\t0\t3"), "line 4: an image number must be an integer >= 1, got '0'"),
        (VIEW2.replace("2\t1", "2\t1\t5"), "line 1: expected a header"),
        (VIEW2.replace("2\t1", "x\t1"), "line 1: the number of folds must be an integer"),
        (VIEW2.rsplit("Cid\t2", 1)[0], "promises 4 pair lines, but the file ends after 3 (line 4)"),
        (VIEW1 + "Eve\t1\t2\n", "line 4: more pair lines than the header"),
        ("\n\n", "the file is empty"),
        (f"{PAIRS_HEADER}\na.jpg\tb.jpg\t1\n", "line 2: expected 4 tab-separated fields"),
        (f"{PAIRS_HEADER}\na.jpg\tb.jpg\t1\t0\na.jpg\tb.jpg\tmaybe\t0\n", "line 3: 'same' must be 1 or 0"),
        (f"{PAIRS_HEADER}\n\na.jpg\tb.jpg\t0\t-1\n", "line 3: the fold must be an integer >= 0"),
        (f"{PAIRS_HEADER}\n\tb.jpg\t0\t1\n", "line 2: an image path is empty"),
    ],
)
def test_malformed_pairs(tmp_path, text, message):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        read_pairs(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes(VIEW1.encode().replace(b"Bob", b"B\xffb"))
    with pytest.raises(DataError, match=r"line 3 is not UTF-8"):
        read_pairs(path)
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="no such file"):
        read_people(tmp_path / "absent.txt")


@pytest.mark.parametrize(
    "text, message",
    [
        ("2\nAnn\t1\n", "fold 1 promises 2 people but the file ends after 1"),
        ("1\nAnn\t1\nBob\t2\n", "line 3: more lines than the counts"),
        ("2\n1\nAnn\t1\n2\nBob\t1\n", "fold 2 promises 2 people but the file ends after 1"),
        ("2\n1\nAnn\t1\n1\nBob\t1\nCid\t1\n", "line 6: more lines"),
        ("2\n2\nAnn\t1\n1\nBob\t1\n", "line 4: expected 'name count' (2 fields), got 1 field"),
        ("3\n1\nAnn\t1\n", "the file ends before fold 2 of 3"),
        ("1\nAnn\tmany\n", "line 2: the image count must be an integer >= 1, got 'many'"),
        ("1\nAnn\t1\t2\n", "line 2: expected 'name count'"),
        ("1 2 3\nAnn\t1\n", "line 1: expected a count header"),
        ("", "the file is empty"),
    ],
)
def test_malformed_people(tmp_path, text, message):
    path = tmp_path / "people.txt"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        read_people(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_missing_images(tmp_path):
    root = tmp_path / "images"
    (root / "Ann").mkdir(parents=True)
    (root / "Ann" / "Ann_0001.jpg").write_bytes(b"jpeg")
    lines = ["8"] + ["Ann\t1\t1"] * 8 + [f"Ann\t1\tP{i}\t1" for i in range(8)]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as raised:
        read_pairs(path, image_root=root)
    message = str(raised.value)
    assert message.startswith(f"{path}: 8 of the 9 images the pairs name are missing under {root}")
    assert "P0/P0_0001.jpg, P1/P1_0001.jpg" in message and message.endswith(", ...")
    assert len(read_pairs(path)) == 16  # without image_root nothing is checked
    with pytest.raises(DataError, match="not a directory"):
        read_pairs(path, image_root=tmp_path / "nowhere")
