"""LFW-style verification protocols: which image pairs to compare, and which people form each fold.

LFW ships its protocols as small text files, and other sets copy the format:

* ``pairs.txt`` (View 2): a header ``folds<TAB>N``, then for each fold N matched lines
  ``name n1 n2`` followed by N mismatched lines ``name1 n1 name2 n2``.
* ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (View 1): a header ``N``, then N matched and N
  mismatched lines, with no folds (every pair gets fold 0; see :func:`stratified_folds`).
* ``people.txt`` (View 2): the number of folds, then per fold a count line and that many
  ``name count`` lines; ``peopleDev*.txt`` (View 1): a count line, then ``name count`` lines.

Image numbers map to ``Name/Name_0004.jpg`` paths, relative to the image root. Our own format,
written by :func:`write_pairs`, is a TSV ``left, right, same, fold`` under a ``# arcface pairs v1``
header, so that pairs of any origin (a .bin unpacked to files, a custom set) have one plain form.
Every problem in a file is a :class:`DataError` naming the file and the line. Image paths stay
inside the image root: an absolute path or a ``..`` step (``../../etc/passwd``) is refused unless the
caller passes ``allow_outside=True``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DataError

__all__ = [
    "PAIRS_HEADER",
    "Pair",
    "read_pairs",
    "write_pairs",
    "read_people",
    "read_people_folds",
    "stratified_folds",
    "check_images_exist",
    "image_path", "protocol_folds"]

logger = logging.getLogger(__name__)

PAIRS_HEADER = "# arcface pairs v1"

# How many missing image paths a DataError quotes before it only gives the count.
_MISSING_SHOWN = 5


@dataclass(frozen=True)
class Pair:
    """Two images to compare: paths relative to the image root, whether they show one person, fold."""

    left: str
    right: str
    same: bool
    fold: int = 0


# --------------------------------------------------------------------------------------- reading


def _split_lines(text: str) -> list[str]:
    # Not str.splitlines: it also splits at form feeds and U+2028, which a TSV image path may hold.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _fields(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-blank line."""
    return [(number, line.split()) for number, line in enumerate(lines, 1) if line.strip()]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")  # a BOM from a Windows editor is not part of the first line
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{path}: line {line} is not UTF-8 text (byte {error.start}); is this a protocol file?"
        ) from None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _count(path: Path, number: int, field: str, what: str, minimum: int = 0) -> int:
    """An integer field >= minimum, or DataError naming the line."""
    try:
        value = int(field)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DataError(f"{path}: line {number}: {what} must be an integer >= {minimum}, got {field!r}")
    return value


def image_path(name: str, number: int, ext: str = ".jpg") -> str:
    """LFW's naming: person ``name``'s ``number``-th image is ``name/name_0004.jpg``."""
    return f"{name}/{name}_{number:04d}{ext}"


def read_pairs(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, ext: str = ".jpg", allow_outside: bool = False
) -> list[Pair]:
    """Read LFW pairs (View 1 or View 2) or our ``# arcface pairs v1`` TSV, in file order.

    Args:
        path: the protocol file.
        image_root: when given, every image the pairs name must exist under it (DataError otherwise,
            with how many are missing and the first few).
        ext: file extension of LFW image names (ignored for the TSV format, which holds full paths).
        allow_outside: accept absolute image paths and ``..`` steps (a pairs file of one's own that
            names images elsewhere); by default they are a DataError naming the line, so a pairs file
            from elsewhere reads nothing outside the image root.

    Returns:
        The pairs; View 2 pairs carry their fold (0-based), View 1 pairs fold 0.
    """
    path = Path(path)
    lines = _split_lines(_read_text(path))
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: the file is empty, expected a pairs header")
    if first.strip() == PAIRS_HEADER:
        pairs = _parse_tsv_pairs(path, lines, allow_outside)
    else:
        pairs = _parse_lfw_pairs(path, _fields(lines), ext, allow_outside)
    logger.debug("read %d pairs from %s", len(pairs), path)
    if image_root is not None:
        check_images_exist(pairs, image_root, source=path)
    return pairs


def _inside(path: Path, number: int, name: str, allow_outside: bool) -> str:
    """``name`` unless it leaves the image root (absolute, or a ``..`` step) and that is not allowed."""
    if not allow_outside:
        absolute = posixpath.isabs(name) or os.path.isabs(name) or bool(os.path.splitdrive(name)[0])
        if absolute or ".." in name.replace("\\", "/").split("/"):
            raise DataError(f"{path}: line {number}: image path {name!r} leaves the image root (absolute or '..'); "
                            f"pairs name images relative to it")
    return name


def _parse_lfw_pairs(path: Path, lines: list[tuple[int, list[str]]], ext: str, allow_outside: bool = False) -> list[Pair]:
    number, header = lines[0]
    if len(header) == 1:  # View 1: N matched then N mismatched, no folds
        folds, per_class = 1, _count(path, number, header[0], "the pair count")
    elif len(header) == 2:  # View 2: folds, then N matched + N mismatched per fold
        folds = _count(path, number, header[0], "the number of folds", minimum=1)
        per_class = _count(path, number, header[1], "the number of pairs per fold and class")
    else:
        raise DataError(
            f"{path}: line {number}: expected a header 'N' (View 1) or 'folds<TAB>N' (View 2) "
            f"or {PAIRS_HEADER!r}, got {_plural(len(header), 'field')}"
        )
    body = lines[1:]
    expected = folds * 2 * per_class
    if len(body) < expected:
        last = lines[-1][0]
        raise DataError(
            f"{path}: the header (line {number}) promises {expected} pair lines, "
            f"but the file ends after {len(body)} (line {last}); is it truncated?"
        )
    if len(body) > expected:
        raise DataError(
            f"{path}: line {body[expected][0]}: more pair lines than the header (line {number}) "
            f"promises ({expected})"
        )
    pairs = []
    for index, (line_number, fields) in enumerate(body):
        fold, position = divmod(index, 2 * per_class)
        pair = _parse_lfw_pair(path, line_number, fields, same=position < per_class, fold=fold, ext=ext)
        _inside(path, line_number, pair.left, allow_outside)
        _inside(path, line_number, pair.right, allow_outside)
        pairs.append(pair)
    return pairs


def _parse_lfw_pair(path: Path, number: int, fields: list[str], same: bool, fold: int, ext: str) -> Pair:
    if same:
        if len(fields) != 3:
            raise DataError(
                f"{path}: line {number}: expected a matched pair 'name n1 n2' (3 fields), "
                f"got {_plural(len(fields), 'field')}"
            )
        name, first, second = fields
        left = image_path(name, _count(path, number, first, "an image number", 1), ext)
        right = image_path(name, _count(path, number, second, "an image number", 1), ext)
    else:
        if len(fields) != 4:
            raise DataError(
                f"{path}: line {number}: expected a mismatched pair 'name1 n1 name2 n2' (4 fields), "
                f"got {_plural(len(fields), 'field')}"
            )
        name1, first, name2, second = fields
        left = image_path(name1, _count(path, number, first, "an image number", 1), ext)
        right = image_path(name2, _count(path, number, second, "an image number", 1), ext)
    return Pair(left, right, same, fold)


def _parse_tsv_pairs(path: Path, lines: list[str], allow_outside: bool = False) -> list[Pair]:
    pairs = []
    header_seen = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not header_seen:  # the first non-blank line, checked by the caller
            header_seen = True
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(
                f"{path}: line {number}: expected 4 tab-separated fields 'left right same fold', got {len(fields)}"
            )
        left, right, same, fold = fields
        if not left or not right:
            raise DataError(f"{path}: line {number}: an image path is empty")
        _inside(path, number, left, allow_outside)
        _inside(path, number, right, allow_outside)
        same_flag = {"1": True, "0": False, "true": True, "false": False}.get(same.strip().lower())
        if same_flag is None:
            raise DataError(f"{path}: line {number}: 'same' must be 1 or 0, got {same!r}")
        pairs.append(Pair(left, right, same_flag, _count(path, number, fold.strip(), "the fold")))
    return pairs


def check_images_exist(
    pairs: Sequence[Pair], image_root: str | os.PathLike, source: str | os.PathLike | None = None
) -> None:
    """Raise DataError unless every image the pairs name is a file under image_root."""
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"{root}: the image root is not a directory")
    names = dict.fromkeys(name for pair in pairs for name in (pair.left, pair.right))
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        shown = ", ".join(missing[:_MISSING_SHOWN]) + (", ..." if len(missing) > _MISSING_SHOWN else "")
        where = f"{source}: " if source is not None else ""
        raise DataError(
            f"{where}{len(missing)} of the {len(names)} images the pairs name are missing under {root}: {shown}"
        )


def read_people_folds(path: str | os.PathLike) -> list[list[tuple[str, int]]]:
    """(name, image count) per fold: 10 folds for people.txt, one for peopleDev*.txt.

    A headerless list of ``name count`` lines (``lfw-names.txt``) is read as one fold too.
    """
    path = Path(path)
    lines = _fields(_split_lines(_read_text(path)))
    if not lines:
        raise DataError(f"{path}: the file is empty, expected a people count")
    if len(lines[0][1]) == 2:  # no header at all: lfw-names.txt
        return [[_parse_person(path, number, fields) for number, fields in lines]]
    number, header = lines[0]
    if len(header) != 1:
        raise DataError(f"{path}: line {number}: expected a count header, got {_plural(len(header), 'field')}")
    first = _count(path, number, header[0], "the header count")
    # View 2 puts a one-field count line right after the number of folds; View 1 a person line.
    view2 = len(lines) > 1 and len(lines[1][1]) == 1
    folds = []
    position = 1
    for fold in range(first if view2 else 1):
        count = first
        if view2:
            if position >= len(lines):
                raise DataError(f"{path}: the file ends before fold {fold + 1} of {first}; is it truncated?")
            number, fields = lines[position]
            if len(fields) != 1:
                raise DataError(
                    f"{path}: line {number}: expected the people count of fold {fold + 1}, "
                    f"got {_plural(len(fields), 'field')}"
                )
            count = _count(path, number, fields[0], "the fold's people count")
            position += 1
        people = lines[position : position + count]
        if len(people) < count:
            raise DataError(
                f"{path}: fold {fold + 1} promises {count} people but the file ends after {len(people)}; "
                "is it truncated?"
            )
        folds.append([_parse_person(path, n, fields) for n, fields in people])
        position += count
    if position < len(lines):
        raise DataError(f"{path}: line {lines[position][0]}: more lines than the counts in the file promise")
    return folds


def _parse_person(path: Path, number: int, fields: list[str]) -> tuple[str, int]:
    if len(fields) != 2:
        raise DataError(f"{path}: line {number}: expected 'name count' (2 fields), got {_plural(len(fields), 'field')}")
    return fields[0], _count(path, number, fields[1], "the image count", 1)


def read_people(path: str | os.PathLike) -> list[tuple[str, int]]:
    """(name, image count) for everyone in a people file, all folds together, in file order."""
    return [person for fold in read_people_folds(path) for person in fold]


# ------------------------------------------------------------------------------------------ folds


def stratified_folds(pairs: Sequence[Pair], n_folds: int = 10) -> list[int]:
    """A fold per pair, so that every fold gets an equal, contiguous share of same and different pairs.

    View 1 files list all matched pairs before all mismatched ones, so splitting them into contiguous
    blocks (what insightface's k-fold does, unshuffled) would give folds of one class only, where a
    threshold cannot be chosen. Here the k-th of ``n_folds`` folds gets same pairs
    ``k*S/n .. (k+1)*S/n`` and different pairs ``k*D/n .. (k+1)*D/n`` (S, D: the class totals), in
    file order, so the split is deterministic and each fold's class balance matches the file's.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    same_total = sum(1 for pair in pairs if pair.same)
    different_total = len(pairs) - same_total
    for total, what in ((same_total, "same"), (different_total, "different")):
        if 0 < total < n_folds:
            raise ValueError(f"only {total} {what} pairs: cannot give each of {n_folds} folds one")
    folds = []
    seen = {True: 0, False: 0}
    for pair in pairs:
        total = same_total if pair.same else different_total
        folds.append(seen[pair.same] * n_folds // total)
        seen[pair.same] += 1
    return folds


def protocol_folds(pairs: Sequence[Pair], n_folds: int = 10) -> tuple[list[int], bool]:
    """The folds to score ``pairs`` with: the file's own when it has several (View 2), else
    :func:`stratified_folds` (View 1 and our TSV files hold one fold). Returns (folds, stratified)."""
    if len({pair.fold for pair in pairs}) > 1:
        return [pair.fold for pair in pairs], False
    return stratified_folds(pairs, n_folds), True


# ---------------------------------------------------------------------------------------- writing


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the block finishes without an exception.

    Writes go to a temporary file in the same directory, renamed over the target at the end, so a
    crash or a full disk never leaves a half-written protocol or .bin behind.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_pairs(path: str | os.PathLike, pairs: Sequence[Pair]) -> None:
    """Write pairs as ``# arcface pairs v1`` TSV (``left right same fold``), which read_pairs reads back."""
    rows = [PAIRS_HEADER]
    for index, pair in enumerate(pairs):
        for image in (pair.left, pair.right):
            if not image or any(char in image for char in "\t\r\n"):
                raise ValueError(f"pair {index}: image path {image!r} is empty or holds a tab or newline")
        if not isinstance(pair.fold, int) or pair.fold < 0:
            raise ValueError(f"pair {index}: fold must be an integer >= 0, got {pair.fold!r}")
        rows.append(f"{pair.left}\t{pair.right}\t{int(bool(pair.same))}\t{pair.fold}")
    with atomic_output(path) as file:
        file.write(("\n".join(rows) + "\n").encode("utf-8"))
    logger.debug("wrote %d pairs to %s", len(pairs), path)
