"""Label noise with a ground truth, to measure cleaning: ``arcface data corrupt``.

Two kinds, as in the sub-center ArcFace paper's analysis of web-crawled data:

* **closed-set**: a sample is given the label of another identity of the set;
* **open-set**: a sample's image is replaced by a face of an identity outside the set, keeping the
  label (the web image of "person A" that shows somebody else entirely).

``rate`` is the fraction of the output's samples that are noisy; the dataset size is unchanged.
The output folder holds ``train.txt`` (``path label``, absolute paths, usable as ``data.source``),
``truth.tsv`` (per sample: path, label, noisy 0/1, the true label or -1 for an outsider) and
``report.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.datasets import ImageFolderDataset, ListDataset
from ..data.errors import DataError
from ..data.protocols import atomic_output

__all__ = ["LabelledImages", "read_labelled_images", "corrupt_labels", "write_noisy_dataset", "read_truth"]

logger = logging.getLogger(__name__)

KINDS = ("closed", "open")


@dataclass
class LabelledImages:
    """Image paths (absolute) and integer labels 0..C-1."""

    paths: list[str]
    labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def read_labelled_images(source: str | os.PathLike) -> LabelledImages:
    """An image folder (``identity/image``) or a ``path label`` list file; other formats are refused."""
    path = Path(source)
    if path.is_dir():
        dataset = ImageFolderDataset(path)
    elif path.suffix in {".txt", ".lst"}:
        dataset = ListDataset(path)
    else:
        raise DataError(f"{path}: expected an image folder (identity/image) or a 'path label' list file (.txt/.lst)")
    return LabelledImages([str(Path(p).resolve()) for p in dataset.paths], np.asarray(dataset.labels, dtype=np.int64))


def _outside_paths(source: str | os.PathLike) -> list[str]:
    path = Path(source)
    if path.is_dir():
        from ..data.align_job import list_images

        names = list_images(path)
        return [str((path / name).resolve()) for name in names]
    return read_labelled_images(path).paths


def corrupt_labels(
    data: LabelledImages, rate: float, kind: str, seed: int, outside: list[str] | None = None
) -> tuple[LabelledImages, np.ndarray, np.ndarray]:
    """Inject noise into ``round(rate * N)`` samples chosen uniformly.

    Returns:
        (noisy data, noisy (N,) bool, true_labels (N,) int64: the original label, or -1 for an outsider).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"--rate must be in [0, 1), got {rate}")
    if kind not in KINDS:
        raise ValueError(f"--kind must be closed or open, got {kind!r}")
    count = int(round(rate * len(data.paths)))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(data.paths), size=count, replace=False))
    paths, labels = list(data.paths), data.labels.copy()
    true_labels = data.labels.copy()
    if kind == "closed":
        if data.num_classes < 2:
            raise ValueError("closed-set noise needs at least 2 identities")
        shift = rng.integers(1, data.num_classes, size=count)  # any other class, uniformly
        labels[chosen] = (labels[chosen] + shift) % data.num_classes
    else:
        if not outside:
            raise ValueError("open-set noise needs images of identities outside the set: pass --outside DIR_OR_LIST")
        pool = sorted(set(outside) - set(data.paths))
        if len(pool) < count:
            raise ValueError(f"open-set noise at rate {rate} needs {count} outside images; --outside has {len(pool)}")
        for slot, image in zip(chosen, rng.choice(len(pool), size=count, replace=False)):
            paths[slot] = pool[image]
        true_labels[chosen] = -1
    noisy = np.zeros(len(paths), dtype=bool)
    noisy[chosen] = True
    return LabelledImages(paths, labels), noisy, true_labels


def write_noisy_dataset(
    source: str | os.PathLike, out: str | os.PathLike, rate: float, kind: str, seed: int, outside: str | os.PathLike | None = None
) -> dict:
    """Read, corrupt and write ``train.txt``, ``truth.tsv``, ``report.json`` into ``out``; returns the report."""
    data = read_labelled_images(source)
    noisy_data, noisy, true_labels = corrupt_labels(data, rate, kind, seed, _outside_paths(outside) if outside else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "train.txt", "".join(f"{p} {label}\n" for p, label in zip(noisy_data.paths, noisy_data.labels)))
    _write_atomic(out / "truth.tsv", "path\tlabel\tnoisy\ttrue_label\n" + "".join(
        f"{p}\t{label}\t{int(n)}\t{t}\n" for p, label, n, t in zip(noisy_data.paths, noisy_data.labels, noisy, true_labels)))
    report = {
        "source": str(source), "kind": kind, "rate": rate, "seed": seed, "outside": None if outside is None else str(outside),
        "samples": len(noisy), "noisy_samples": int(noisy.sum()), "noise_rate": float(noisy.mean()) if len(noisy) else 0.0,
        "classes": data.num_classes,
    }
    _write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    logger.info("%s noise: %d of %d samples (%.1f%%) -> %s", kind, report["noisy_samples"], report["samples"], 100 * report["noise_rate"], out)
    return report


def read_truth(path: str | os.PathLike) -> list[tuple[str, bool]]:
    """``truth.tsv`` -> [(path, noisy)] in the file's (= the dataset's) order."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[:3] != ["path", "label", "noisy"]:
        raise DataError(f"{path}: not a truth.tsv written by `arcface data corrupt` (header path, label, noisy, true_label)")
    truth = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 4 or fields[2] not in ("0", "1"):
            raise DataError(f"{path}: line {number}: expected path, label, noisy (0/1), true_label")
        truth.append((fields[0], fields[2] == "1"))
    return truth


def _write_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as handle:
        handle.write(text.encode("utf-8"))
