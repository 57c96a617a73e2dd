"""``arcface data unpack``: a ``.rec`` or a ``.bin`` back into plain files, bytes unchanged.

:func:`unpack` writes ``OUT_DIR/unpack_complete.json`` (the source and the counts) last, and removes
an old one first: a folder without it is an unpack that did not finish (killed, disk full).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from .errors import DataError
from .pack import sniff_extension

__all__ = ["unpack", "unpack_bin", "COMPLETE_MARKER"]

COMPLETE_MARKER = "unpack_complete.json"


def unpack_bin(bin_path: str | Path, out_dir: str | Path) -> dict:
    """A ``.bin`` verification set -> ``OUT_DIR/images/<index>.jpg`` and ``OUT_DIR/pairs.tsv``.

    Pair i is images 2i and 2i+1; its fold is ``10 * i // pairs`` (insightface evaluates the pairs
    in 10 consecutive folds).
    """
    from .binset import read_bin
    from .protocols import Pair, write_pairs

    verification = read_bin(bin_path)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for index, data in enumerate(tqdm(verification.images, desc="unpack", unit="img", disable=None)):
        name = f"images/{index:06d}{sniff_extension(data)}"
        (out_dir / name).write_bytes(data)
        names.append(name)
    count = len(verification.issame)
    pairs = [Pair(names[2 * i], names[2 * i + 1], bool(same), 10 * i // count) for i, same in enumerate(verification.issame)]
    write_pairs(out_dir / "pairs.tsv", pairs)
    return {"images": len(names), "pairs": count, "same": sum(p.same for p in pairs)}


def unpack(source: str | Path, out_dir: str | Path) -> dict:
    """Dispatch on the suffix: ``.rec`` (RecordIO) or ``.bin`` (verification set); then the completion marker."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if source.suffix not in (".rec", ".bin"):
        raise DataError(f"{source}: cannot unpack this file type (expected a .rec or a .bin)")
    out_dir = Path(out_dir)
    marker = out_dir / COMPLETE_MARKER
    marker.unlink(missing_ok=True)  # the folder is incomplete from now until the new marker
    if source.suffix == ".rec":
        from .pack import unpack_records

        counts = unpack_records(source, out_dir)
    else:
        counts = unpack_bin(source, out_dir)
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps({"source": str(source), **counts}, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, marker)
    return counts
