"""Checkpoints that survive a kill at any moment: temporary file, fsync, atomic rename, keep-last-N.

A checkpoint is one ``torch.save`` dict that describes itself: the config it was made with, the
step and data position, model, head, optimizers, scaler and RNG states. Loading uses
``weights_only=True`` (no code runs from a checkpoint file).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ..data.errors import DataError

__all__ = ["CheckpointError", "save_checkpoint", "list_checkpoints", "load_checkpoint", "load_checkpoint_or_run", "initial_backbone_weights", "load_latest", "CHECKPOINT_DIR"]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(DataError):
    """A missing, truncated or corrupt checkpoint."""


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows); the rename is still atomic
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_torch_save(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    _fsync_directory(path.parent)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """``step_*.pt`` files of a run, newest (highest step) first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(state: dict, run_dir: str | Path, step: int, keep_last: int) -> Path:
    """Save ``checkpoints/step_XXXXXXXX.pt`` atomically, then delete all but the newest ``keep_last``."""
    path = Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"
    atomic_torch_save(state, path)
    for old in list_checkpoints(run_dir)[keep_last:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint; CheckpointError if it is missing, truncated or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(error).__name__}: {error}); the file is truncated or corrupt") from error
    if not isinstance(state, dict) or "config" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not an arcface training checkpoint (no config/step)")
    return state


def load_checkpoint_or_run(path: str | Path) -> tuple[Path, dict]:
    """A checkpoint file, or the newest checkpoint of a run folder: (its path, its state)."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path}: no checkpoints in this run folder (looked in {path / CHECKPOINT_DIR})")
        path = found[0]
    return path, load_checkpoint(path)


def initial_backbone_weights(path: str | Path, backbone: str, embedding_size: int) -> dict:
    """The backbone state dict of a checkpoint (or run folder) to start a training from (fine-tuning).

    CheckpointError when it is unreadable or its backbone is not ``backbone`` with ``embedding_size``-D
    embeddings (the weights would not fit).
    """
    path, state = load_checkpoint_or_run(path)
    model = state["config"].get("model", {})
    found = (model.get("backbone"), model.get("embedding_size"))
    if found != (backbone, embedding_size):
        raise CheckpointError(
            f"model.init_from: {path} holds a {found[0]} with {found[1]}-D embeddings, this run builds a "
            f"{backbone} with {embedding_size}-D embeddings"
        )
    return state["backbone"]


def load_latest(run_dir: str | Path, fallback: bool = False) -> tuple[Path, dict]:
    """The newest readable checkpoint of a run.

    Args:
        fallback: when the newest is corrupt, go back to the previous good one (logged) instead of
            raising.
    """
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"{run_dir}: no checkpoints to resume from (looked in {Path(run_dir) / CHECKPOINT_DIR})")
    errors = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            if not fallback:
                raise CheckpointError(f"{error}; pass --fallback to resume from the previous good checkpoint") from error
            log.warning("%s; trying the previous one", error)
            errors.append(str(error))
    raise CheckpointError(f"{run_dir}: every checkpoint is unreadable: {'; '.join(errors)}")
