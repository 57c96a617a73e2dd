"""``arcface clean``: drop noisy samples with a sub-center ArcFace checkpoint, write the cleaned dataset.

Streams over the dataset in chunks: only the (N, K) cosines of each sample to its own class's
sub-centers are kept, so memory is bounded by N*K numbers, not N*D.

DATA is an image folder, a ``path label`` list file or an insightface ``.rec`` (+ ``.idx``).

Outputs in the output folder:
    train.txt              kept samples, ``path label`` with labels renumbered 0..C'-1 (empty classes removed);
                           image folders and list files only
    train.rec (.idx, property)  the kept samples in insightface's layout, image bytes unchanged, labels
                           renumbered: always for a ``.rec`` DATA, with ``rec=True`` for the others
    label_map.tsv          old label -> new label (-1: class removed)
    dropped.tsv            dropped samples: path (record key for a .rec), label, angle to the dominant sub-center
    classes.tsv            per class: samples, dominant sub-center, its share of the class, kept samples
    dominant_centers.pt    {"weight": (C', D)}: each kept class's dominant sub-center, for a K=1 head
                           (``head.init_from``) to fine-tune instead of retraining
    report.json            counts, the four categories of the paper's Figure 7, noise rates and
                           detection precision / recall when a ground truth (truth.tsv) is given, and
                           ``threshold_sweep``: the same counts at 60, 65, ..., 90 degrees
    angles.png             Figure 7-like histograms (needs matplotlib; skipped without it)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ..data.datasets import FaceTransform, build_dataset
from ..data.errors import DataError
from ..data.face_records import write_face_records
from ..data.pack import encoded_image_size
from ..eval.embed import embed_images
from ..model import load_trained_model
from .noise import _write_atomic as _write
from .noise import read_truth
from .subcenter import CATEGORIES, decide, dominant_subcenters, dominant_weight

__all__ = ["clean_dataset"]

logger = logging.getLogger(__name__)

CHUNK = 16384  # samples embedded per chunk: bounds the memory of the embedding step
SWEEP_DEG = (60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0)  # thresholds report.json also counts


def _sub_centers(state: dict, path: Path) -> tuple[torch.Tensor, int, int]:
    weight = state["head"].get("weight") if isinstance(state.get("head"), dict) else None
    if weight is None:
        raise DataError(f"{path}: the checkpoint has no head centers")
    num_classes = int(state.get("num_classes") or 0)
    if num_classes <= 0 or weight.shape[0] % num_classes:
        raise DataError(f"{path}: head weight of {weight.shape[0]} rows does not divide into {num_classes} classes")
    sub_centers = weight.shape[0] // num_classes
    if sub_centers < 2:
        raise DataError(
            f"{path}: the head has one center per class; cleaning needs sub-centers: train with "
            f"head.name=subcenter_arcface (K=3) or head.sub_centers=3"
        )
    return weight.float(), num_classes, sub_centers


def _plot(decision, threshold: float, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: %s not drawn (pip install matplotlib)", path.name)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.linspace(0, 120, 61)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    panels = (
        (decision.nearest_is_dominant, "nearest to the dominant sub-center", ("easy clean", "hard noisy")),
        (~decision.nearest_is_dominant, "nearest to a non-dominant sub-center", ("hard clean", "easy noisy")),
    )
    for axis, (mask, title, names) in zip(axes, panels):
        angles = decision.nearest_angle[mask].numpy()
        axis.hist(angles[angles <= threshold], bins=bins, color="tab:green", label=f"{names[0]} ({int((angles <= threshold).sum())})")
        axis.hist(angles[angles > threshold], bins=bins, color="tab:red", label=f"{names[1]} ({int((angles > threshold).sum())})")
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1)
        axis.set_title(title)
        axis.set_xlabel("angle to that sub-center (degrees)")
        axis.legend()
    axes[0].set_ylabel("samples")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def clean_dataset(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    threshold_deg: float = 75.0,
    truth: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 2,
    flip_test: bool = True,
    progress: bool = True,
    rec: bool = False,
) -> dict:
    """Clean ``data`` (the dataset the checkpoint was trained on) into ``out``; returns the report.

    Args:
        data: image folder, ``path label`` list file or ``.rec``.
        truth: ``truth.tsv`` of ``arcface data corrupt`` (default: the one beside a list file, if any),
            for the detection precision/recall and the noise rates; list files and folders only.
        rec: also write the cleaned set as ``train.rec`` (always done for a ``.rec`` DATA).
    """
    start = time.perf_counter()
    trained = load_trained_model(checkpoint, need_head=True)
    checkpoint_path, state = trained.path, trained.state
    weight, num_classes, sub_centers = _sub_centers(state, checkpoint_path)
    head = trained.head.double()
    backbone = trained.backbone.to(device).eval()
    dataset = build_dataset(str(data), transform=FaceTransform(flip=0.0, spec=trained.input_spec))
    from_records = not hasattr(dataset, "paths")
    if from_records and truth:
        raise DataError(f"{truth}: a ground truth names image paths; it can only score a list file or an image folder, not {data}")
    if (from_records or rec) and Path(out).resolve() == Path(data).resolve().parent:
        raise DataError(f"{out}: the output folder is DATA's own; train.rec and property would replace what is there")
    labels = torch.as_tensor(dataset.labels, dtype=torch.int64)
    if int(labels.max()) + 1 != num_classes:
        raise DataError(f"{data}: {int(labels.max()) + 1} classes, but the checkpoint's head has {num_classes}; "
                        f"give the dataset the checkpoint was trained on")
    cosines = torch.empty(len(dataset), sub_centers, dtype=torch.float64)
    chunks = range(0, len(dataset), CHUNK)
    for begin in tqdm(chunks, desc="clean: embed", unit="chunk", disable=not progress or len(chunks) == 1):
        indices = list(range(begin, min(begin + CHUNK, len(dataset))))
        embeddings = embed_images(backbone, Subset(dataset, indices), batch_size=batch_size, flip_test=flip_test,
                                  device=device, num_workers=workers, progress=progress and len(chunks) == 1)
        with torch.no_grad():
            cosines[begin : begin + len(indices)] = head.class_subcenter_cosines(torch.from_numpy(embeddings).double(), labels[indices])
    nearest = cosines.argmax(dim=1)
    dominant = dominant_subcenters(nearest, labels, num_classes, sub_centers)
    decision = decide(cosines, labels, dominant, threshold_deg)
    keep = decision.keep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept_per_class = torch.bincount(labels[keep], minlength=num_classes)
    samples_per_class = torch.bincount(labels, minlength=num_classes)
    dominant_votes = torch.bincount(labels[decision.nearest_is_dominant], minlength=num_classes)
    surviving = kept_per_class > 0
    new_label = torch.full((num_classes,), -1, dtype=torch.int64)
    new_label[surviving] = torch.arange(int(surviving.sum()))
    kept = torch.nonzero(keep)[:, 0].tolist()
    outputs = ([] if from_records else ["train.txt"]) + (["train.rec"] if (from_records or rec) and kept else [])
    if from_records:
        names, name_column = [str(key) for key in dataset.keys], "record_key"
    else:
        names, name_column = [str(Path(p).resolve()) for p in dataset.paths], "path"
        _write(out / "train.txt", "".join(f"{names[i]} {int(new_label[labels[i]])}\n" for i in kept))
    if "train.rec" in outputs:
        _write_records(dataset, kept, new_label[labels[kept]].tolist(), out / "train.rec", progress)
    _write(out / "label_map.tsv", "old_label\tnew_label\n" + "".join(f"{c}\t{int(new_label[c])}\n" for c in range(num_classes)))
    _write(out / "dropped.tsv", f"{name_column}\tlabel\tangle_to_dominant_deg\n" + "".join(
        f"{names[i]}\t{int(labels[i])}\t{float(decision.dominant_angle[i]):.2f}\n" for i in torch.nonzero(~keep)[:, 0].tolist()))
    share = dominant_votes.double() / samples_per_class.clamp(min=1).double()
    _write(out / "classes.tsv", "label\tsamples\tdominant_subcenter\tdominant_share\tkept\n" + "".join(
        f"{c}\t{int(samples_per_class[c])}\t{int(dominant[c])}\t{float(share[c]):.3f}\t{int(kept_per_class[c])}\n" for c in range(num_classes)))
    torch.save({"weight": dominant_weight(weight, dominant, sub_centers)[surviving], "source_checkpoint": str(checkpoint_path),
                "label_map": new_label}, out / "dominant_centers.pt")

    categories = torch.bincount(decision.category, minlength=len(CATEGORIES))
    present = samples_per_class > 0
    report = {
        "checkpoint": str(checkpoint_path), "data": str(data), "threshold_deg": threshold_deg, "sub_centers": sub_centers,
        "flip_test": flip_test, "outputs": outputs,
        "samples": len(labels), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
        "classes": num_classes, "classes_kept": int(surviving.sum()), "classes_removed": int(num_classes - surviving.sum()),
        "categories": {name: int(count) for name, count in zip(CATEGORIES, categories)},
        "dominant_share": {"mean": float(share[present].mean()), "median": float(share[present].median()),
                           "min": float(share[present].min())},
        "angle_to_dominant_deg": {"median": float(decision.dominant_angle.median()),
                                  "p95": float(decision.dominant_angle.quantile(0.95))},
    }
    truth_path = Path(truth) if truth else (Path(data).parent / "truth.tsv" if Path(data).is_file() and not from_records else None)
    truth_rows = read_truth(truth_path) if truth_path is not None and truth_path.is_file() else None
    if truth_rows is not None:
        report["ground_truth"] = _against_truth(truth_rows, names, keep, truth_path)
    elif truth:
        raise DataError(f"{truth}: ground-truth file not found")
    # What other thresholds would keep (the paper calls 70-80 degrees safe; where a model sits in that
    # range depends on how tightly it has fitted its data), without embedding the dataset again.
    report["threshold_sweep"] = [
        {"threshold_deg": t, "kept": int((decision.dominant_angle <= t).sum()),
         **({key: value for key, value in _against_truth(truth_rows, names, decision.dominant_angle <= t, truth_path).items()
             if key != "truth_file"} if truth_rows is not None else {})}
        for t in SWEEP_DEG]
    report["plot"] = "angles.png" if _plot(decision, threshold_deg, out / "angles.png") else None
    report["seconds"] = time.perf_counter() - start
    _write(out / "report.json", json.dumps(report, indent=2) + "\n")
    logger.info("kept %d of %d samples (%d classes of %d); report in %s", report["kept"], report["samples"],
                report["classes_kept"], num_classes, out / "report.json")
    return report


def _write_records(dataset, kept: list[int], labels: list[int], path: Path, progress: bool) -> None:
    """The kept samples' image bytes, unchanged, with their new labels, as an insightface .rec/.idx/property."""
    size = getattr(getattr(dataset, "records", None), "image_size", None)
    if size is None:  # a list or folder: property records the first kept image's size, as `arcface data pack` does
        size = encoded_image_size(dataset.encoded(kept[0]), Path(dataset.paths[kept[0]]))
    samples = ((dataset.encoded(i), label) for i, label in zip(
        tqdm(kept, desc="clean: write train.rec", unit="img", disable=not progress), labels))
    write_face_records(path, samples, image_size=size)


def _against_truth(truth: list[tuple[str, bool]], paths: list[str], keep: torch.Tensor, source: Path) -> dict:
    """Detection precision/recall of the dropped samples and the noise rates before and after."""
    if [p for p, _ in truth] != paths:
        raise DataError(f"{source}: its samples are not the dataset's (same paths in the same order expected)")
    noisy = torch.tensor([n for _, n in truth], dtype=torch.bool)
    dropped = ~keep
    hits = int((dropped & noisy).sum())
    return {
        "truth_file": str(source),
        "noise_rate_before": float(noisy.double().mean()),
        "noise_rate_after": float(noisy[keep].double().mean()) if keep.any() else 0.0,
        "noisy_dropped": hits, "noisy_kept": int((keep & noisy).sum()), "clean_dropped": int((dropped & ~noisy).sum()),
        "precision": hits / max(1, int(dropped.sum())),
        "recall": hits / max(1, int(noisy.sum())),
    }
