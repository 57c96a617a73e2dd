"""``arcface data unpack``: a ``.rec`` or a ``.bin`` back into plain files, bytes unchanged."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .errors import DataError
from .pack import sniff_extension

__all__ = ["unpack", "unpack_bin"]


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
    """Dispatch on the suffix: ``.rec`` (RecordIO) or ``.bin`` (verification set)."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if source.suffix == ".rec":
        from .pack import unpack_records

        return unpack_records(source, out_dir)
    if source.suffix == ".bin":
        return unpack_bin(source, out_dir)
    raise DataError(f"{source}: cannot unpack this file type (expected a .rec or a .bin)")
