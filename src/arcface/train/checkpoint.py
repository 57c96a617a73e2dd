"""The trainer's side of checkpoints: save with keep-last-N, resume from the newest readable one.

Reading, listing and the atomic write itself live in :mod:`arcface.model.checkpoint_file` (every
command that uses a trained model reads checkpoints; only training writes them).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..model.checkpoint_file import (
    CHECKPOINT_DIR,
    CheckpointError,
    atomic_torch_save,
    list_checkpoints,
    load_checkpoint,
    load_checkpoint_or_run,
)

__all__ = ["CheckpointError", "save_checkpoint", "list_checkpoints", "load_checkpoint", "load_checkpoint_or_run", "initial_backbone_weights", "load_latest", "CHECKPOINT_DIR"]

log = logging.getLogger(__name__)


def save_checkpoint(state: dict, run_dir: str | Path, step: int, keep_last: int) -> Path:
    """Save ``checkpoints/step_XXXXXXXX.pt`` atomically, then delete all but the newest ``keep_last``."""
    path = Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"
    atomic_torch_save(state, path)
    for old in list_checkpoints(run_dir)[keep_last:]:
        old.unlink(missing_ok=True)
    return path


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
