"""Embeddings of aligned faces, and verification of image pairs and insightface ``.bin`` sets.

>>> from arcface.eval import verify_bin
>>> result = verify_bin(model, "faces_emore/lfw.bin", batch_size=128, device="cuda")
>>> result.accuracy_mean, result.accuracy_std

Every distinct image is embedded once; a pair's score is the cosine similarity of its two
L2-normalized embeddings. With ``flip_test`` (on by default, as the field reports) an image's
embedding is ``normalize(f(x) + f(mirror(x)))``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.binset import VerificationSet, read_bin
from ..data.datasets import FaceTransform, decode_image
from ..data.errors import DataError
from ..data.protocols import Pair, check_images_exist, protocol_folds
from ..input_spec import DEFAULT_INPUT_SPEC, FACE_SIZE, InputSpec
from .pair_index import PairIndex, bin_folds, image_positions
from .verification import VerificationResult

__all__ = ["embed_images", "PairImages", "BinImages", "verify_pairs", "verify_bin", "bin_folds", "IMAGE_SIZE"]

logger = logging.getLogger(__name__)

IMAGE_SIZE = FACE_SIZE


# ------------------------------------------------------------------------------------ embedding


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device``, or the model's own when None; refuse a mismatch up front."""
    model_device = _model_device(model)
    if device is None:
        return model_device if model_device is not None else torch.device("cpu")
    device = torch.device(device)
    if model_device is not None and (
        model_device.type != device.type or (device.index is not None and model_device.index != device.index)
    ):
        raise ValueError(
            f"the model is on {model_device} but device={str(device)!r}; move the model first "
            "(model.to(device)) or pass device=None to use the model's device"
        )
    return model_device if model_device is not None and device.index is None else device


def _split(item: object) -> tuple[torch.Tensor, object]:
    """(image, extra) from a dataset item: the item itself, or ``(image, extra, ...)``."""
    if isinstance(item, (tuple, list)):
        return torch.as_tensor(item[0]), item[1] if len(item) > 1 else None
    return torch.as_tensor(item), None


def _batches(
    images: Iterable | Dataset, batch_size: int, num_workers: int, pin_memory: bool
) -> tuple[Iterator[tuple[torch.Tensor, object]], int | None]:
    """(B, 3, H, W) batches (and the items' extras) from a Dataset or any iterable of (3, H, W) images."""
    if isinstance(images, Dataset) and hasattr(images, "__len__"):
        loader = DataLoader(
            images, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
        )
        return (_split(batch) for batch in loader), len(images)
    total = len(images) if hasattr(images, "__len__") else None  # type: ignore[arg-type]
    iterator = iter(images)

    def generate() -> Iterator[tuple[torch.Tensor, object]]:
        while chunk := list(itertools.islice(iterator, batch_size)):
            pieces = [_split(item) for item in chunk]
            yield torch.stack([image for image, _ in pieces]), [extra for _, extra in pieces]

    return generate(), total


def embed_images(
    model: nn.Module,
    images: Iterable[torch.Tensor] | Dataset,
    batch_size: int = 64,
    flip_test: bool = True,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    num_workers: int = 0,
    normalize: bool = True,
    collect: list | None = None,
) -> np.ndarray:
    """Embed aligned faces with ``model``: (N, D) float32, each row L2-normalized.

    Args:
        model: (B, 3, H, W) -> (B, D). Already on ``device``; it is put in eval mode for the call
            and back in its previous mode afterwards, so a trainer can call this between steps.
        images: (3, 112, 112) float tensors normalized as (x/255 - 0.5)/0.5, or a Dataset of them
            (items may also be ``(image, label)``, as the training datasets give).
        batch_size: images per forward (per two forwards' worth with flip_test, which doubles it).
        flip_test: embedding = normalize(f(x) + f(horizontal mirror of x)).
        device: where to run; None = the model's device (CPU for a model without parameters).
        autocast_dtype: e.g. torch.float16 / torch.bfloat16 to run the forward under autocast.
        channels_last: feed the model NHWC-strided batches (faster convolutions on recent GPUs).
        progress: show a progress bar.
        num_workers: DataLoader workers when ``images`` is a Dataset.
        normalize: L2-normalize each row; False gives the raw (flip-summed) embeddings, whose norm
            IJB template pooling uses as a quality weight.
        collect: when a list, the second element of each dataset item (a label, how the image was
            aligned, ...) is appended to it, one per image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _resolve_device(model, device)
    batches, total = _batches(images, batch_size, num_workers, pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    outputs: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=total, desc="embed", unit="img", disable=not progress) as bar:
            for batch, extra in batches:
                if collect is not None:
                    collect.extend(extra.tolist() if isinstance(extra, torch.Tensor) else list(extra))
                if batch.ndim != 4:
                    raise ValueError(f"expected (3, H, W) images, got a batch of shape {tuple(batch.shape)}")
                count = batch.shape[0]
                batch = batch.to(device, dtype=torch.float32, non_blocking=True)
                if flip_test:
                    batch = torch.cat([batch, batch.flip(3)])
                batch = batch.contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    features = model(batch)
                if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != batch.shape[0]:
                    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                    raise ValueError(f"the model must return (B, D) embeddings; for B={batch.shape[0]} it gave {shape}")
                features = features.float()
                if flip_test:
                    features = features[:count] + features[count:]
                outputs.append((F.normalize(features, dim=1) if normalize else features).cpu())
                bar.update(count)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("no images to embed")
    return torch.cat(outputs).numpy()


# ---------------------------------------------------------------------------------------- images


class _AlignedImages(Dataset):
    """Base: decode encoded bytes to a (3, 112, 112) tensor normalized by ``spec``, resizing (once-warned) if needed."""

    def __init__(self, spec: InputSpec = DEFAULT_INPUT_SPEC) -> None:
        self.transform = FaceTransform(flip=0.0, spec=spec)
        self._warned_resize = False  # per dataset (and per DataLoader worker, each holds a copy)

    def _tensor(self, data: bytes, source: str) -> torch.Tensor:
        image = decode_image(data, source)
        if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            if not self._warned_resize:
                self._warned_resize = True
                logger.warning(
                    "%s is %dx%d, not an aligned %dx%d face; resizing it (and any others) with INTER_AREA. "
                    "Align the images first (arcface data align) for meaningful accuracy",
                    source, image.shape[1], image.shape[0], IMAGE_SIZE, IMAGE_SIZE,
                )
            image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        return self.transform(image)


class PairImages(_AlignedImages):
    """The distinct images of verification pairs, each once: ``dataset[i] -> (3, 112, 112)`` float32.

    Attributes:
        paths: distinct image paths (relative to ``image_root``), in order of first appearance.
        left, right: (P,) int index into ``paths`` of each pair's images.
        same: (P,) bool; folds: (P,) int, from the pairs.
    """

    def __init__(self, pairs: Sequence[Pair], image_root: str | os.PathLike, spec: InputSpec = DEFAULT_INPUT_SPEC) -> None:
        super().__init__(spec)
        if not pairs:
            raise ValueError("no pairs given")
        self.root = Path(image_root)
        check_images_exist(pairs, self.root)
        self.paths, self.left, self.right = image_positions(pairs)
        self.same = np.array([pair.same for pair in pairs], dtype=bool)
        self.folds = np.array([pair.fold for pair in pairs], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.root / self.paths[index]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
        return self._tensor(data, str(path))


class BinImages(_AlignedImages):
    """The 2N images of a .bin, in order: pair k is images 2k and 2k+1."""

    def __init__(self, verification: VerificationSet, spec: InputSpec = DEFAULT_INPUT_SPEC) -> None:
        super().__init__(spec)
        self.verification = verification
        self.name = str(verification.source) if verification.source is not None else ".bin"

    def __len__(self) -> int:
        return len(self.verification.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._tensor(self.verification.images[index], f"{self.name}: image {index}")


# ----------------------------------------------------------------------------------- verification


def verify_pairs(
    model: nn.Module,
    pairs: Sequence[Pair],
    image_root: str | os.PathLike,
    *,
    folds: Sequence[int] | None = None,
    spec: InputSpec = DEFAULT_INPUT_SPEC,
    **embed_kwargs,
) -> VerificationResult:
    """K-fold verification accuracy of ``model`` on protocol pairs of aligned 112x112 images.

    Args:
        pairs: from :func:`arcface.data.protocols.read_pairs`; paths relative to ``image_root``.
        folds: (P,) fold per pair; default :func:`arcface.data.protocols.protocol_folds` (the file's own
            folds, or stratified folds for View 1 pairs, which are all fold 0).
        spec: the model's input spec.
        embed_kwargs: passed to :func:`embed_images` (batch_size, flip_test, device, ...).
    """
    images = PairImages(pairs, image_root, spec)
    index = PairIndex(images.left, images.right, images.same, np.zeros(len(pairs), dtype=np.int64))
    index = index.with_folds(protocol_folds(pairs)[0] if folds is None else folds)
    return index.result(embed_images(model, images, **embed_kwargs))


def verify_bin(
    model: nn.Module,
    bin_path: str | os.PathLike | VerificationSet,
    *,
    n_folds: int = 10,
    spec: InputSpec = DEFAULT_INPUT_SPEC,
    **embed_kwargs,
) -> VerificationResult:
    """K-fold verification accuracy of ``model`` on an insightface ``.bin`` (lfw, cfp_fp, agedb_30, ...).

    Args:
        bin_path: the file, or a :class:`VerificationSet` already read with
            :func:`arcface.data.binset.read_bin` (a trainer evaluating every few steps reads it once).
        n_folds: consecutive folds of (near) equal size, 10 as insightface.
        embed_kwargs: passed to :func:`embed_images` (batch_size, flip_test, device, ...).
    """
    verification = bin_path if isinstance(bin_path, VerificationSet) else read_bin(bin_path)
    index = PairIndex.from_bin(verification, n_folds)
    return index.result(embed_images(model, BinImages(verification, spec), **embed_kwargs))
