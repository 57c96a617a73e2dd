"""Training checkpoints as files: read (``weights_only``), list a run's, write atomically.

A checkpoint is one ``torch.save`` dict that describes itself: the config it was made with, the input
spec of its backbone, the step and data position, model, head, optimizers, scaler and RNG states.
Loading uses ``weights_only=True``: no code runs from a checkpoint file. The trainer (``arcface.train``)
writes and resumes them; everything else reads them through this module.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch

from ..data.errors import DataError
from ..input_spec import DEFAULT_INPUT_SPEC, InputSpec

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "atomic_torch_save",
    "checkpoint_input_spec",
    "checkpoint_step",
    "load_refusal",
    "list_checkpoints",
    "load_checkpoint",
    "load_checkpoint_or_run",
]

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
    """Write ``state`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    Raises:
        CheckpointError: the write failed (a full disk, a read-only folder); the temporary file is
            removed and ``path`` is untouched.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a full disk as a RuntimeError
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0] if str(error) else type(error).__name__
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise CheckpointError(f"{path}: cannot write ({reason}); {kept}") from error
    _fsync_directory(path.parent)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """``step_*.pt`` files of a run, newest (highest step) first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_step(path: Path) -> int:
    """The step in a ``step_XXXXXXXX.pt`` name."""
    match = _STEP_FILE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a step_*.pt checkpoint name")
    return int(match.group(1))


def load_refusal(error: Exception, default: str = "the file holds objects that are not tensors or plain values") -> str:
    """The first line of a ``torch.load(weights_only=True)`` error without its advice to retry with
    ``weights_only=False`` (which would run the file's code)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [line for line in lines if not re.search(r"weights_only|weights only load failed|torch\.load|pytorch\.org", line, re.IGNORECASE)]
    return kept[0].rstrip(".") if kept else default


def load_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint; CheckpointError if it is missing, truncated or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower():
            raise CheckpointError(f"{path}: refused: {load_refusal(error)}; a checkpoint holds tensors and plain values only, "
                                  "this file asks to run code or build other objects (not loaded)") from None
        reason = load_refusal(error, default="unreadable")
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(error).__name__}: {reason}); the file is truncated or corrupt") from error
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


def checkpoint_input_spec(state: dict) -> InputSpec:
    """The input spec a checkpoint's backbone was trained with (checkpoints older than the field: the default)."""
    values = state.get("input_spec")
    return InputSpec.from_dict(values) if isinstance(values, dict) else DEFAULT_INPUT_SPEC
