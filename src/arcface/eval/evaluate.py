"""Whole evaluations behind ``arcface eval``: images -> cached embeddings -> protocol metrics -> report.

Each ``evaluate_*`` function returns a JSON-ready report (a dict) that records what was measured and
how: the model and its input convention, how images were aligned (counts per kind), flip-test,
metric, precision, timings. The embedding step goes through an :class:`EmbeddingCache`, so a second
run with the same model and preprocessing only re-scores.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.align import FACE_CHOICES
from ..data.align_job import list_images
from ..data.binset import read_bin
from ..data.errors import DataError
from ..data.protocols import check_images_exist, read_pairs
from .cache import EmbeddingCache, cache_key
from .embed import BinImages, embed_images
from .identification import identify
from .pair_index import PairIndex, unit_rows
from .ijb import ijb_verification, read_ijb_meta
from .images import ALIGN_MODES, FaceImages, Prep, count_preps
from ..model import ModelInfo, file_fingerprint
from .verification import FAR_TARGETS, eer, kfold_accuracy, rate_key, roc, tar_at_far

__all__ = ["EvalOptions", "evaluate_pairs", "evaluate_bin", "evaluate_ijb", "evaluate_identification", "plot_roc"]

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalOptions:
    """How images are prepared and embedded, and how pairs are scored."""

    align: str = "auto"  # auto | yunet | none | center (see FaceImages)
    detector: str | None = None  # YuNet .onnx, for alignment on the fly
    crop_size: int | None = None  # center crop side in pixels (center mode and the no-face fallback)
    face_choice: str = "largest"  # several faces in an image: largest (as common evaluation scripts) | center | score
    flip_test: bool = True  # embedding of an image = f(x) + f(mirror(x))
    metric: str = "cosine"  # cosine | l2 (squared L2 distance of the normalized embeddings)
    batch_size: int = 64
    workers: int = 2  # DataLoader processes reading and aligning images
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast of a PyTorch model; ONNX runs in its own precision)
    cache_dir: str | None = None  # None: no embedding cache
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.align in ALIGN_MODES, f"align must be one of {', '.join(ALIGN_MODES)}, got {self.align!r}"),
            (self.face_choice in FACE_CHOICES, f"face choice must be one of {', '.join(FACE_CHOICES)}, got {self.face_choice!r}"),
            (self.metric in ("cosine", "l2"), f"metric must be cosine or l2, got {self.metric!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.crop_size is None or self.crop_size >= 8, f"crop size must be >= 8 pixels, got {self.crop_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.pop("progress")
        values.pop("cache_dir")
        return values


# ------------------------------------------------------------------------------------ embedding


class _TaggedBin(Dataset):
    """A .bin's images with their prep code (they are aligned already)."""

    def __init__(self, images: BinImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(Prep.PRE_ALIGNED)


def _cache_settings(info: ModelInfo, options: EvalOptions, source: dict) -> dict:
    detector = file_fingerprint(options.detector) if options.detector and Path(options.detector).is_file() else None
    return {"model": info.to_dict(), "align": options.align, "detector": detector, "crop_size": options.crop_size, "face_choice": options.face_choice,
            "flip_test": options.flip_test, "precision": options.precision, **source}


def _embed(model: nn.Module, dataset: Dataset, options: EvalOptions) -> tuple[np.ndarray, np.ndarray]:
    preps: list[int] = []
    use_cuda = options.device.startswith("cuda")
    embeddings = embed_images(
        model, dataset, batch_size=options.batch_size, flip_test=options.flip_test, device=options.device,
        autocast_dtype=PRECISIONS[options.precision], channels_last=use_cuda, progress=options.progress,
        num_workers=options.workers, normalize=False, collect=preps,
    )
    return embeddings, np.asarray(preps, dtype=np.int8)


def embed_named(
    model: nn.Module, info: ModelInfo, names: Sequence[str], make_dataset, options: EvalOptions, source: dict
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Raw (flip-summed, unnormalized) embeddings of named images, through the cache when enabled.

    Args:
        names: image names (unique), e.g. paths relative to the image root.
        make_dataset: ``names -> Dataset`` of ``(image, prep code)`` for the names to embed.
        source: what identifies the images beyond their names (root folder, .bin fingerprint).

    Returns:
        (embeddings (N, D) float32, prep codes (N,), {"embedded": n, "from_cache": m, "seconds": s}).
    """
    start = time.perf_counter()
    if options.cache_dir is None:
        embeddings, preps = _embed(model, make_dataset(list(names)), options)
        return embeddings, preps, {"embedded": len(names), "from_cache": 0, "seconds": time.perf_counter() - start}
    settings = _cache_settings(info, options, source)
    cache = EmbeddingCache(options.cache_dir, cache_key(settings), settings)
    missing = cache.missing(names)
    if missing:
        embeddings, preps = _embed(model, make_dataset(missing), options)
        cache.add(missing, embeddings, preps)
        cache.save()
    embeddings, preps = cache.get(names)
    stats = {"embedded": len(missing), "from_cache": len(names) - len(missing), "seconds": time.perf_counter() - start,
             "cache_file": str(cache.path)}
    return embeddings, preps, stats


# ------------------------------------------------------------------------------------ verification


def _verification_report(scores: np.ndarray, same: np.ndarray, folds: np.ndarray, metric: str) -> tuple[dict, tuple | None]:
    result = kfold_accuracy(scores, same, folds)
    both_kinds = 0 < np.count_nonzero(same) < len(same)
    if not both_kinds:
        logger.warning("all %d pairs are %s pairs: no ROC, TAR@FAR or EER", len(same), "same" if same.all() else "different")
    far, tar = roc(scores, same)[:2] if both_kinds else (None, None)
    sign = 1.0 if metric == "cosine" else -1.0  # report an L2 threshold as a positive distance
    report = {
        "accuracy": result.accuracy_mean,
        "accuracy_std": result.accuracy_std,
        "fold_accuracies": [float(a) for a in result.fold_accuracies],
        "best_threshold_accuracy": result.best_threshold_accuracy,
        "threshold": sign * result.threshold,
        "threshold_meaning": "same person when cosine > threshold" if metric == "cosine"
        else "same person when squared L2 distance < threshold",
        "tar_at_far": {rate_key(f): t for f, t in tar_at_far(scores, same, FAR_TARGETS).items()} if both_kinds else {},
        "eer": eer(scores, same) if both_kinds else None,
        "num_pairs": int(len(scores)),
        "num_same": int(np.count_nonzero(same)),
        "num_folds": int(len(result.folds)),
    }
    return report, (far, tar) if both_kinds else None


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = "ROC") -> None:
    """TAR against FAR (log scale) for one or more named curves, to a PNG. Needs matplotlib."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("--roc needs matplotlib: pip install matplotlib (or 'arcface[plots]')") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for label, (far, tar) in curves.items():
        keep = far > 0
        axes.plot(far[keep], tar[keep], label=label)
    axes.set_xscale("log")
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _base_report(protocol: str, info: ModelInfo, options: EvalOptions, **fields) -> dict:
    return {"protocol": protocol, **fields, "model": info.to_dict(), "options": options.to_dict()}


def evaluate_pairs(
    model: nn.Module, info: ModelInfo, pairs_file: str | os.PathLike, images_root: str | os.PathLike,
    options: EvalOptions, n_folds: int = 10,
) -> tuple[dict, tuple[np.ndarray, np.ndarray] | None]:
    """K-fold verification on an LFW-format pairs file (or our TSV pairs) over an image folder.

    Folds: the file's own (View 2 ``pairs.txt``: 10 folds of 300 same + 300 different); a file with
    one fold (View 1, TSV) is split into ``n_folds`` stratified folds.

    Returns:
        (report, (far, tar) of the ROC).
    """
    options.validate()
    start = time.perf_counter()
    pairs = read_pairs(pairs_file)
    root = Path(images_root)
    check_images_exist(pairs, root, source=pairs_file)
    names, index = PairIndex.from_pairs(pairs, n_folds)

    def make_dataset(subset: list[str]) -> Dataset:
        return FaceImages(subset, root, options.align, options.detector, options.crop_size, face_choice=options.face_choice, spec=info.spec)

    embeddings, preps, stats = embed_named(model, info, names, make_dataset, options, {"images": str(root.resolve())})
    scores = index.scores(embeddings, options.metric)
    metrics, curve = _verification_report(scores, index.same, index.folds, options.metric)
    report = _base_report(
        "pairs", info, options, pairs_file=str(pairs_file), images=str(root),
        folds_from=f"{n_folds} stratified folds" if index.stratified else "the file", **metrics,
        num_images=len(names), alignment=count_preps(preps), embedding=stats,
        seconds=time.perf_counter() - start,
    )
    return report, curve


def evaluate_bin(
    model: nn.Module, info: ModelInfo, bin_path: str | os.PathLike, options: EvalOptions, n_folds: int = 10
) -> tuple[dict, tuple[np.ndarray, np.ndarray] | None]:
    """K-fold verification on an insightface ``.bin`` (aligned pairs; consecutive folds as insightface)."""
    options.validate()
    start = time.perf_counter()
    verification = read_bin(bin_path)
    images = BinImages(verification, info.spec)
    names = [str(i) for i in range(len(images))]
    embeddings, preps, stats = embed_named(
        model, info, names, lambda subset: _TaggedBin(_Subset(images, [int(n) for n in subset])), options,
        {"bin": file_fingerprint(bin_path)},
    )
    index = PairIndex.from_bin(verification, n_folds)
    metrics, curve = _verification_report(index.scores(embeddings, options.metric), index.same, index.folds, options.metric)
    report = _base_report("bin", info, options, bin=str(bin_path), **metrics, num_images=len(names),
                          alignment=count_preps(preps), embedding=stats, seconds=time.perf_counter() - start)
    return report, curve


class _Subset(Dataset):
    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


# ------------------------------------------------------------------------------------ IJB, 1:N


def evaluate_ijb(
    model: nn.Module, info: ModelInfo, root: str | os.PathLike, name: str, options: EvalOptions,
    use_detector_score: bool = True,
) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """IJB-B/C 1:1 template verification: images aligned with the protocol's landmarks when given."""
    options.validate()
    start = time.perf_counter()
    meta = read_ijb_meta(root, name)
    image_dir = meta.image_dir
    names = [str(n) for n in meta.image_names]
    missing = [n for n in dict.fromkeys(names) if not (image_dir / n).is_file()]
    if missing:
        raise DataError(f"{image_dir}: {len(missing)} of the images the meta files name are missing, e.g. {missing[:3]}")
    unique = list(dict.fromkeys(names))
    position = {n: i for i, n in enumerate(names)}  # images are unique in the published meta files
    if len(unique) != len(names):
        raise DataError(f"{root}: image names repeat in the {name} face/template list; expected one line per image")

    def make_dataset(subset: list[str]) -> Dataset:
        landmarks = None if meta.landmarks is None else meta.landmarks[[position[n] for n in subset]]
        return FaceImages(subset, image_dir, options.align, options.detector, options.crop_size, landmarks=landmarks,
                          face_choice=options.face_choice, spec=info.spec)

    embeddings, preps, stats = embed_named(model, info, names, make_dataset, options, {"ijb": str(Path(root).resolve()), "name": name})
    use_scores = use_detector_score and meta.scores is not None
    result = ijb_verification(embeddings, meta, use_detector_score=use_scores)
    far, tar, _ = roc(result.scores, result.labels)
    report = _base_report("ijb", info, options, ijb=str(root), name=name, detector_score_weighting=use_scores,
                          **result.to_dict(), num_images=len(names), alignment=count_preps(preps), embedding=stats,
                          seconds=time.perf_counter() - start)
    return report, (far, tar)


def _identity_folder(root: Path, what: str, labelled: bool) -> tuple[list[str], list[str]]:
    """Images under ``root`` (``identity/image`` when labelled) and their identity names."""
    if not root.is_dir():
        raise DataError(f"{root}: the {what} folder does not exist")
    names = list_images(root)
    if not names:
        raise DataError(f"{root}: no images in the {what} folder")
    if labelled:
        flat = [n for n in names if len(Path(n).parts) < 2]
        if flat:
            raise DataError(f"{root}: {what} images must sit in one folder per identity (identity/image.jpg); found {flat[0]}")
        return names, [Path(n).parts[0] for n in names]
    return names, []


def evaluate_identification(
    model: nn.Module, info: ModelInfo, gallery: str | os.PathLike, probes: str | os.PathLike,
    options: EvalOptions, distractors: str | os.PathLike | None = None,
) -> dict:
    """1:N identification: probes against a gallery (folders of ``identity/image``), plus distractors.

    Probes of identities without a gallery folder are non-mated (open-set: TPIR at FPIR); every
    distractor image joins the gallery as an identity of its own (MegaFace style).
    """
    options.validate()
    start = time.perf_counter()
    sets = {"gallery": (Path(gallery), True), "probes": (Path(probes), True)}
    if distractors is not None:
        sets["distractors"] = (Path(distractors), False)
    features, labels, alignment, stats = {}, {}, {}, {}
    for what, (root, labelled) in sets.items():
        names, identities = _identity_folder(root, what, labelled)

        def make_dataset(subset: list[str], root: Path = root) -> Dataset:
            return FaceImages(subset, root, options.align, options.detector, options.crop_size, face_choice=options.face_choice,
                              spec=info.spec)

        embeddings, preps, stats[what] = embed_named(model, info, names, make_dataset, options, {"images": str(root.resolve())})
        features[what], labels[what], alignment[what] = unit_rows(embeddings), identities, count_preps(preps)
    result = identify(features["gallery"], labels["gallery"], features["probes"], labels["probes"],
                      distractors=features.get("distractors"))
    return _base_report("identification", info, options, gallery=str(gallery), probes=str(probes),
                        distractors=None if distractors is None else str(distractors), **result.to_dict(),
                        alignment=alignment, embedding=stats, seconds=time.perf_counter() - start)
