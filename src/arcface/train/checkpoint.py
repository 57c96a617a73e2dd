"""The trainer's side of checkpoints: save with keep-last-N, set aside, resume from the newest good one.

Reading, listing and the atomic write itself live in :mod:`arcface.model.checkpoint_file` (every
command that uses a trained model reads checkpoints; only training writes them).

A failed write (a full disk) removes its temporary file and leaves the previous checkpoint as it
was. Only states whose tensors are all
finite are written by the training loop (:func:`nonfinite_tensors`), and a resume refuses a
checkpoint with non-finite weights, naming the newest one without.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import torch

from ..model.checkpoint_file import (
    CHECKPOINT_DIR,
    CheckpointError,
    atomic_torch_save,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    load_checkpoint_or_run,
    load_refusal,
)

__all__ = [
    "CheckpointError", "save_checkpoint", "list_checkpoints", "load_checkpoint", "load_checkpoint_or_run", "initial_backbone_weights",
    "load_latest", "load_refusal", "nonfinite_tensors", "set_aside", "checkpoint_step", "CHECKPOINT_DIR",
]

log = logging.getLogger(__name__)

def _float_tensors(value, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(value):
        if value.is_floating_point() or value.is_complex():
            yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _float_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _float_tensors(item, f"{name}.{index}")


def nonfinite_tensors(state: dict, parts: tuple[str, ...] = ("backbone", "head", "backbone_optimizer", "head_optimizer")) -> list[str]:
    """Names of the tensors under ``parts`` of a checkpoint dict holding a NaN or an infinity (weights,
    BatchNorm statistics, optimizer moments): a state worth keeping has none."""
    return [name for part in parts for name, tensor in _float_tensors(state.get(part), part) if not bool(torch.isfinite(tensor).all())]


def _describe_nonfinite(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"non-finite values in {shown}"


def save_checkpoint(state: dict, run_dir: str | Path, step: int, keep_last: int, protect: tuple[Path, ...] = ()) -> Path:
    """Save ``checkpoints/step_XXXXXXXX.pt`` atomically, then delete all but the newest ``keep_last``,
    never the one just written nor those in ``protect`` (the last state known to be good)."""
    path = Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"
    atomic_torch_save(state, path)
    for old in list_checkpoints(run_dir)[keep_last:]:
        if old != path and old not in protect:
            old.unlink(missing_ok=True)
    return path


def set_aside(path: Path, reason: str) -> Path:
    """Rename a checkpoint that must not be resumed from (corrupt, non-finite, diverged) to
    ``step_N.pt.<reason>``: out of keep-last-N's count and of later resumes, but kept for inspection."""
    target = path.with_name(f"{path.name}.{reason}")
    os.replace(path, target)
    log.warning("%s set aside as %s", path, target.name)
    return target


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


def load_latest(run_dir: str | Path, fallback: bool = False) -> tuple[Path, dict, list[tuple[Path, str]]]:
    """The newest readable checkpoint of a run whose weights are finite.

    Args:
        fallback: when the newest is corrupt or holds non-finite weights, go back to the previous good
            one (logged) instead of raising.

    Returns:
        (its path, its state, the newer checkpoints passed over as ``(path, "corrupt" | "nonfinite")``).
    """
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"{run_dir}: no checkpoints to resume from (looked in {Path(run_dir) / CHECKPOINT_DIR})")
    errors, skipped = [], []
    for position, path in enumerate(candidates):
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            if not fallback:
                raise CheckpointError(f"{error}; pass --fallback to resume from the previous good checkpoint") from error
            log.warning("%s; trying the previous one", error)
            errors.append(str(error))
            skipped.append((path, "corrupt"))
            continue
        bad = nonfinite_tensors(state)
        if not bad:
            return path, state, skipped
        problem = f"{path}: {_describe_nonfinite(bad)}; resuming from it would train on NaN"
        if not fallback:
            good = _newest_finite(candidates[position + 1:])
            advice = (f"the newest checkpoint with finite weights is {good.name}: pass --fallback to resume from it" if good is not None
                      else "no older checkpoint of this run has finite weights: start a new run")
            raise CheckpointError(f"{problem}; {advice}")
        log.warning("%s; trying the previous one", problem)
        errors.append(problem)
        skipped.append((path, "nonfinite"))
    raise CheckpointError(f"{run_dir}: no checkpoint is readable with finite weights: {'; '.join(errors)}")


def _newest_finite(paths: list[Path]) -> Path | None:
    for path in paths:
        try:
            if not nonfinite_tensors(load_checkpoint(path)):
                return path
        except CheckpointError:
            continue
    return None
