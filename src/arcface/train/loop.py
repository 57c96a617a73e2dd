"""The training loop: one process on CPU/GPU, or DDP backbone + model-parallel head under torchrun.

``train(config, run_dir)`` writes into ``run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``
(one JSON line per logged step and per evaluation), ``checkpoints/step_*.pt`` (atomic, keep-last-N),
``best.pt`` (best verification accuracy) and ``summary.json``. ``train(..., resume=True)`` continues
from the newest checkpoint exactly where it stopped: same data order, flips, RNG and optimizer state.

Nothing good is lost: one training at a time holds the run folder (an OS lock, see ``run_folder``); a
checkpoint is written only when every weight, statistic and optimizer moment is finite, so keep-last-N
never rotates the last good state out; the count of non-finite steps in a row travels in the
checkpoint; a failed write (a full disk) stops the run with the previous checkpoint intact.
``callbacks`` (:class:`TrainCallback`) see every micro-batch and every step, for variants of the
loop (e.g. adversarial fine-tuning) that change the images without copying the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate, get_worker_info
from tqdm import tqdm

from .. import __version__
from ..backbones import create_backbone
from ..data.datasets import FaceTransform, build_dataset
from ..data.protocols import atomic_output
from ..input_spec import DEFAULT_INPUT_SPEC
from ..heads.partial_fc import PartialFCHead
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    checkpoint_step,
    initial_backbone_weights,
    list_checkpoints,
    load_latest,
    nonfinite_tensors,
    save_checkpoint,
    set_aside,
)
from .config import ConfigError, TrainConfig, apply_overrides, config_from_dict, config_to_dict
from .distributed import DistributedContext
from .metrics import MetricsLog, strict_json
from .head_state import (
    build_training_head,
    head_full_state,
    load_head_full_state,
    load_optimizer_full_state,
    optimizer_full_state,
)
from .run_folder import RunFolderError, RunFolderLock, check_new_run_folder
from .sampler import EpochSampler, FlipEncodedDataset
from .schedule import lr_factor

__all__ = ["train", "TrainingError", "TrainCallback", "RESUME_FIXED_KEYS"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why and what to try."""


# Settings a resume cannot change: the checkpoint's weights or optimizer state would not fit.
RESUME_FIXED_KEYS = ("model.backbone", "model.embedding_size", "head.name", "head.sub_centers", "optim.name")


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch consumed
    elapsed: float = 0.0  # seconds of training (excluding evaluation and checkpointing)
    nonfinite_skipped: int = 0
    nonfinite_in_a_row: int = 0  # the current streak of skipped steps (precision.max_nonfinite_in_a_row)
    skipped_bad: int = 0  # unreadable samples replaced by the next one (data.skip_bad)
    best_accuracy: float = -1.0
    best_step: int = -1


class TrainCallback:
    """Hooks into the training loop; override what you need (the defaults change nothing).

    ``run`` is the running trainer: ``run.config``, ``run.position``, ``run.device``,
    ``run.memory_format``, ``run.autocast_dtype``, ``run.forward(images)`` (embeddings, compiled when
    asked), ``run.head``.
    """

    def on_micro_batch(self, run: "_Run", images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The images to train on instead of ``images`` ((B, 3, H, W) as the loader gives them; labels (B,))."""
        return images

    def on_step(self, run: "_Run", record: dict) -> None:
        """After each optimizer step: ``{"step", "loss", "lr", "finite"}`` (``finite``: the step was taken)."""


def train(
    config: TrainConfig | None, run_dir: str | Path, resume: bool = False, fallback: bool = False, overrides: list[str] | None = None,
    overwrite: bool = False, callbacks: Sequence[TrainCallback] = (),
) -> dict:
    """Train according to ``config`` into ``run_dir``; returns the summary (also in summary.json).

    With ``resume=True`` the config saved in the newest checkpoint is used, with ``overrides``
    (``key=value``) applied on top: changing the recipe there gives up bit-exact continuation, but
    ``schedule.stop_after_steps``, ``checkpoint.*``, ``eval.*`` and ``data.num_workers`` are safe;
    :data:`RESUME_FIXED_KEYS` cannot change. A new run refuses a folder holding another run unless
    ``overwrite``. The folder is locked for the whole training (RunFolderError when another holds it).
    """
    run_dir = Path(run_dir)
    if resume and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder to resume")
    context = DistributedContext.from_environment(config.device if config is not None else "auto")
    lock = RunFolderLock(run_dir)
    try:
        problem = None
        if context.is_main:
            try:
                lock.acquire()
                if not resume:
                    check_new_run_folder(run_dir, overwrite)
            except (RunFolderError, OSError) as error:
                problem = str(error)
        problem = context.broadcast_object(problem)  # every rank stops together
        if problem is not None:
            raise RunFolderError(problem)
        return _Run(config, run_dir, context, resume, fallback, overrides or [], callbacks).run()
    finally:
        lock.release()
        context.close()


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    optim = config.optim
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def _build_dataset(config: TrainConfig):
    """The training images, unflipped (flips are drawn by the sampler, per epoch position)."""
    source = config.data.source
    if source.startswith("synthetic:"):
        return build_dataset(source)
    kwargs = {"transform": FaceTransform(flip=0.0), "skip_bad": config.data.skip_bad}
    if config.data.root and Path(source).suffix in {".txt", ".lst"}:
        kwargs["root"] = config.data.root
    return build_dataset(source, **kwargs)


class _CountingCollate:
    """Batches ``(images (B, 3, H, W), labels (B,), skipped)``: ``skipped`` is how many unreadable samples
    (data.skip_bad) this worker replaced since its previous batch, so the loop counts exactly the
    skips of the batches it consumed, whichever process read them."""

    def __init__(self, dataset):
        self.dataset = dataset  # used when batches are made in this process (num_workers=0)
        self.reported = 0

    def __call__(self, samples):
        images, labels = default_collate(samples)
        info = get_worker_info()
        dataset = info.dataset.dataset if info is not None else self.dataset  # the worker's own copy
        skipped = getattr(dataset, "skipped", 0)
        delta, self.reported = skipped - self.reported, skipped
        return images, labels, delta


def _get(values: dict, key: str):
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _resumed_config(saved: dict, overrides: list[str], run_dir: Path) -> TrainConfig:
    """The checkpoint's config with ``overrides``; ConfigError naming a setting the weights cannot follow."""
    config = config_from_dict(apply_overrides(json.loads(json.dumps(saved)), overrides))
    resolved = config_to_dict(config)
    defaults = config_to_dict(TrainConfig())
    for key in RESUME_FIXED_KEYS:
        before = _get(saved, key)
        before = _get(defaults, key) if before is None else before  # a key the checkpoint's version did not write
        after = _get(resolved, key)
        if before != after:
            raise ConfigError(
                f"--resume {run_dir}: {key} is {before!r} in the checkpoint, {after!r} now; its weights and optimizer state "
                f"cannot be carried over: keep {key}, or start a new run (another --out; model.init_from={run_dir} starts "
                f"from its backbone)"
            )
    return config


class _Run:
    def __init__(self, config: TrainConfig | None, run_dir: Path, context: DistributedContext, resume: bool, fallback: bool, overrides: list[str],
                 callbacks: Sequence[TrainCallback] = ()):
        self.run_dir, self.context = run_dir, context
        self.device = context.device
        self.callbacks = list(callbacks)
        self.resumed_step: int | None = None
        resumed = None
        if resume:
            path, resumed, passed_over = load_latest(run_dir, fallback)
            log.info("resuming from %s (step %d)", path, resumed["step"])
            config = _resumed_config(resumed["config"], overrides, run_dir)
            self.resumed_step = resumed["step"]
            context.barrier()  # every rank has read its checkpoint before newer, unusable ones are moved
            if context.is_main:
                for skipped, reason in passed_over:
                    set_aside(skipped, reason)
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.precision.autocast == "fp16" and self.device.type != "cuda":
            raise ValueError("precision.autocast=fp16 needs a GPU (fp16 on CPU is slow and unsafe); use bf16 on CPU")

        torch.manual_seed(config.seed)  # identical model init on every rank and every world size
        self.dataset = _build_dataset(config)
        self.num_classes = self.dataset.num_classes
        self.sampler = EpochSampler(len(self.dataset), config.data.batch_size, context.rank, context.world_size, config.seed, config.data.flip,
                                     encode_epoch=config.data.augment.enabled)
        self.loader = DataLoader(
            FlipEncodedDataset(self.dataset, config.data.augment, config.seed), batch_sampler=self.sampler, num_workers=config.data.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False, collate_fn=_CountingCollate(self.dataset),
        )
        model = config.model
        backbone = create_backbone(
            model.backbone, embedding_size=model.embedding_size, dropout=model.dropout,
            **({"activation_checkpointing": True} if model.activation_checkpointing else {}),
        )
        if model.init_from and resumed is None:
            backbone.load_state_dict(initial_backbone_weights(model.init_from, model.backbone, model.embedding_size))
            log.info("backbone weights from %s", model.init_from)
        backbone = backbone.to(self.device)
        self.memory_format = torch.channels_last if model.channels_last else torch.contiguous_format
        backbone = backbone.to(memory_format=self.memory_format)
        self.backbone = backbone
        self.model = DistributedDataParallel(backbone, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if context.distributed else backbone
        # Only the training forward is compiled: checkpoints keep the plain module's parameter names and
        # evaluation (other batch sizes, eval mode) runs eagerly instead of triggering recompilations.
        self.train_forward = torch.compile(self.model) if model.compile else self.model
        self.compiled_ok = False
        self.head = build_training_head(config.head, self.num_classes, model.embedding_size, context.rank, context.world_size, config.seed).to(self.device)
        self.backbone_optimizer = _optimizer(config, [p for p in backbone.parameters() if p.requires_grad])
        self.head_optimizer = _optimizer(config, list(self.head.parameters()))
        self.scaler = torch.amp.GradScaler("cuda") if config.precision.autocast == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision.autocast)
        batches = self.sampler.batches_per_epoch() // config.optim.accumulation
        self.total_steps = config.schedule.max_steps or max(1, math.ceil(config.schedule.epochs * batches))
        self.time_budget = config.schedule.time_budget_minutes * 60.0
        self.position = Position()
        torch.manual_seed(config.seed * 7919 + 1 + context.rank)  # per-rank stream for dropout etc.
        if resumed is not None:
            self._restore(resumed)

    # ------------------------------------------------------------------ state
    def _gather_ranks(self, value):
        if not self.context.distributed:
            return [value]
        values = [None] * self.context.world_size
        dist.all_gather_object(values, value)
        return values

    def _state(self) -> dict:
        """The checkpoint dict (collectives inside: call on every rank)."""
        head_state = head_full_state(self.head)
        head_optimizer = optimizer_full_state(self.head_optimizer, self.head)
        sampler_states = self._gather_ranks(self.head.sampler_state() if isinstance(self.head, PartialFCHead) else None)
        rng_states = self._gather_ranks(torch.get_rng_state())
        return {
            "arcface_version": __version__,
            "config": config_to_dict(self.config),
            "input_spec": DEFAULT_INPUT_SPEC.to_dict(),  # what FaceTransform fed the backbone
            "world_size": self.context.world_size,
            "step": self.position.step,
            "position": vars(self.position).copy(),
            "num_classes": self.num_classes,
            "backbone": self.backbone.state_dict(),
            "head": head_state,
            "backbone_optimizer": self.backbone_optimizer.state_dict(),
            "head_optimizer": head_optimizer,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_states,
            "head_sampler": sampler_states,
        }

    def _restore(self, state: dict) -> None:
        if state["num_classes"] != self.num_classes:
            raise ValueError(f"the checkpoint has {state['num_classes']} classes, the dataset {self.num_classes}: not the same data")
        try:
            self.backbone.load_state_dict(state["backbone"])
            load_head_full_state(self.head, state["head"])
            self.backbone_optimizer.load_state_dict(state["backbone_optimizer"])
            load_optimizer_full_state(self.head_optimizer, self.head, state["head_optimizer"])
        except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"--resume {self.run_dir}: the checkpoint does not fit this run's model, head or optimizer "
                             f"({type(error).__name__}: {first}); resume with the settings it was made with") from error
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        known = {item.name for item in dataclasses.fields(Position)}
        self.position = Position(**{key: value for key, value in state["position"].items() if key in known})
        same_layout = state["world_size"] == self.context.world_size
        if same_layout:
            torch.set_rng_state(state["rng"][self.context.rank])
            if isinstance(self.head, PartialFCHead) and state["head_sampler"][self.context.rank] is not None:
                self.head.load_sampler_state(state["head_sampler"][self.context.rank])
        else:
            log.info("resuming %d processes from a checkpoint of %d: class centers re-split", self.context.world_size, state["world_size"])
            torch.manual_seed(self.config.seed * 7919 + 1 + self.context.rank + 104729 * self.position.step)

    def _newest_checkpoint(self) -> str:
        found = list_checkpoints(self.run_dir)
        return str(found[0]) if found else "none"

    def _save(self, best: bool = False) -> bool:
        """Write a checkpoint (or ``best.pt``) of the current state if all of it is finite; False when it is not.

        CheckpointError (on every rank) when the write fails, e.g. on a full disk.
        """
        state = self._state()
        outcome = None
        if self.context.is_main:
            bad = nonfinite_tensors(state)
            if bad:
                outcome = f"nonfinite:{', '.join(bad[:3])}{' and %d more' % (len(bad) - 3) if len(bad) > 3 else ''}"
            else:
                try:
                    if best:
                        atomic_torch_save(state, self.run_dir / "best.pt")
                    else:
                        path = save_checkpoint(state, self.run_dir, self.position.step, self.config.checkpoint.keep_last,
                                               protect=self._before_streak())
                        log.debug("saved %s", path)
                except CheckpointError as error:
                    outcome = f"error:{error}"
        outcome = self.context.broadcast_object(outcome)
        if outcome is None:
            return True
        kind, _, detail = outcome.partition(":")
        if kind == "error":
            raise CheckpointError(f"{detail}; training stopped at step {self.position.step}, newest checkpoint: {self._newest_checkpoint()}")
        log.warning("step %d: non-finite values in %s; %s not written (newest finite checkpoint: %s)", self.position.step, detail,
                    "best.pt" if best else "checkpoint", self._newest_checkpoint())
        return False

    def _streak_base(self) -> int:
        """The newest step whose state is not known to be bad: the current step outside a streak of
        skipped steps; within one, the step whose state gave its first non-finite loss (the weights
        have not moved since)."""
        return self.position.step - self.position.nonfinite_in_a_row

    def _before_streak(self) -> tuple[Path, ...]:
        """What keep-last-N must keep besides the checkpoint being written: the newest one whose next
        step had a finite loss (older than :meth:`_streak_base`), the last state known to train on."""
        base = self._streak_base()
        older = [path for path in list_checkpoints(self.run_dir) if checkpoint_step(path) < base]
        return tuple(older[:1])

    def _model_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return [(f"{prefix}.{name}", tensor) for prefix, module in (("backbone", self.backbone), ("head", self.head))
                for name, tensor in module.named_parameters() if tensor.numel()]

    def _model_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return [(f"{prefix}.{name}", tensor) for prefix, module in (("backbone", self.backbone), ("head", self.head))
                for name, tensor in module.named_buffers() if tensor.is_floating_point() and tensor.numel()]

    def _model_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [item for item in (*self._model_parameters(), *self._model_buffers()) if item[1].is_floating_point()]

    def _state_finite(self) -> bool:
        """Whether every parameter and buffer (BatchNorm statistics) of the backbone and head is finite, on
        every rank. Checked after each step with one fused L2-norm pass (a NaN or an infinity makes its
        tensor's norm non-finite): 21 ms for IResNet-50's 44M values on a 2-core AMD EPYC, next to steps
        of seconds there; the max-abs norm took 25x longer on the CPU."""
        tensors = [tensor.detach() for _, tensor in self._model_tensors()]
        with torch.no_grad():
            try:
                finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all())
            except (AttributeError, RuntimeError, TypeError):  # an older PyTorch or an unsupported dtype
                finite = False
            if not finite:  # the norm also overflows for finite weights above ~1e19: confirm value by value
                finite = all(bool(torch.isfinite(tensor).all()) for tensor in tensors)
        return self._all_ranks(finite)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self) -> dict | None:
        config = self.config.eval
        if config.pairs is None and not config.bins:
            return None
        results = {}
        if self.context.is_main:
            from ..eval import verify_bin, verify_pairs
            from ..data.protocols import read_pairs

            self.backbone.eval()
            kwargs = {"batch_size": config.batch_size, "device": self.device, "autocast_dtype": self.autocast_dtype,
                      "channels_last": self.memory_format == torch.channels_last}
            if config.pairs is not None:
                pairs = read_pairs(config.pairs)
                # View 1 files (pairsDevTest.txt) have no folds and list all same pairs first.
                result = verify_pairs(self.backbone, pairs, config.images, **kwargs)
                results[Path(config.pairs).name] = result.accuracy_mean
            for bin_path in config.bins:
                results[Path(bin_path).name] = verify_bin(self.backbone, bin_path, **kwargs).accuracy_mean
            self.backbone.train()
        results = self.context.broadcast_object(results)
        accuracy = sum(results.values()) / len(results)
        if accuracy > self.position.best_accuracy:
            previous = self.position.best_accuracy, self.position.best_step
            self.position.best_accuracy, self.position.best_step = accuracy, self.position.step
            if not self._save(best=True):
                self.position.best_accuracy, self.position.best_step = previous
        return {"step": self.position.step, "elapsed_s": self.position.elapsed, "eval": results,
                "best_accuracy": self.position.best_accuracy}

    # ------------------------------------------------------------------ training
    def _progress(self) -> float:
        if self.time_budget > 0:
            return self.position.elapsed / self.time_budget
        return self.position.step / self.total_steps

    def _done(self) -> bool:
        stop_after = self.config.schedule.stop_after_steps
        if stop_after and self.position.step >= stop_after:
            return True
        if self.time_budget > 0:
            over_steps = self.config.schedule.max_steps and self.position.step >= self.config.schedule.max_steps
            return self.position.elapsed >= self.time_budget or bool(over_steps)
        return self.position.step >= self.total_steps

    def _set_lr(self) -> float:
        factor = lr_factor(self._progress(), self.config.schedule.warmup_fraction, self.config.schedule.power)
        lr = self.config.optim.lr * factor
        for optimizer in (self.backbone_optimizer, self.head_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) embeddings, compiled when model.compile asks and compilation works."""
        if self.train_forward is self.model:
            return self.model(images)
        try:
            embeddings = self.train_forward(images)
            self.compiled_ok = True
            return embeddings
        except Exception as error:  # noqa: BLE001 - any compiler failure (no C++ toolchain, unsupported op)
            if self.compiled_ok:
                raise  # compiled steps already ran: this is not a compilation problem
            log.warning("model.compile: torch.compile failed (%s: %s); training eagerly instead",
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            self.train_forward = self.model
            return self.model(images)

    def _micro_step(self, images: torch.Tensor, labels: torch.Tensor, last_in_window: bool) -> float:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        sync = contextlib.nullcontext() if last_in_window or not self.context.distributed else self.model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                embeddings = self.forward(images)
            loss = self.head(embeddings, labels)
            scaled = loss / self.config.optim.accumulation
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            # Backward even for a non-finite loss: every rank must join the same collectives; the
            # step is then skipped on all ranks together.
            scaled.backward()
        return float(loss.detach())

    def _optimizer_step(self, finite: bool) -> None:
        optimizers = (self.backbone_optimizer, self.head_optimizer)
        if finite:
            if self.scaler is not None:
                for optimizer in optimizers:
                    self.scaler.unscale_(optimizer)
            if self.config.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.backbone.parameters(), self.config.optim.grad_clip)
            for optimizer in optimizers:
                if self.scaler is not None:
                    self.scaler.step(optimizer)
                else:
                    optimizer.step()
            if self.scaler is not None:
                self.scaler.update()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _write_text(self, name: str, text: str) -> None:
        """Replace ``run_dir/name`` atomically: a full disk leaves the previous file, not half of one."""
        with atomic_output(self.run_dir / name) as handle:
            handle.write(text.encode("utf-8"))

    def _set_aside_from(self, first_suspect: int) -> str:
        """Before stopping on a divergence: set aside the checkpoints of steps >= ``first_suspect`` (the
        state whose forward or update went non-finite, and later ones): resuming from them would
        diverge again. Returns how to go on."""
        if self.context.is_main:
            for path in list_checkpoints(self.run_dir):
                if checkpoint_step(path) >= first_suspect:
                    set_aside(path, "diverged")
        self.context.barrier()
        found = list_checkpoints(self.run_dir)
        if not found:
            return "no checkpoint of this run predates the divergence: start again with a lower optim.lr"
        return f"the newest checkpoint before the divergence is {found[0]}: --resume {self.run_dir} continues from it"

    def _check_divergence(self) -> None:
        """After each step: raise TrainingError when training cannot go on well (non-finite weights or
        statistics, or too many skipped steps in a row), first setting aside the checkpoints that led there."""
        position = self.position
        if not self._state_finite():
            names = [(name, is_buffer) for is_buffer, module_tensors in ((False, self._model_parameters()), (True, self._model_buffers()))
                     for name, tensor in module_tensors if not bool(torch.isfinite(tensor).all())]
            shown = ", ".join(name for name, _ in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            # A skipped step, or BatchNorm statistics gone non-finite, mean the forward pass of the state
            # before them overflowed: a resume from that state would do it again. Weights alone gone
            # non-finite after a finite loss mean the update overflowed: the state before it is good.
            forward_broke = position.nonfinite_in_a_row > 0 or self._any_rank(any(is_buffer for _, is_buffer in names))
            suspect = position.step - max(position.nonfinite_in_a_row, 1) if forward_broke else position.step
            raise TrainingError(
                f"step {position.step}: the model is no longer finite ({shown or 'on another process'}): training diverged; "
                f"{self._set_aside_from(suspect)} with a lower optim.lr (e.g. --set optim.lr=...)"
            )
        if position.nonfinite_in_a_row >= self.config.precision.max_nonfinite_in_a_row:
            raise TrainingError(
                f"the loss was non-finite for {position.nonfinite_in_a_row} steps in a row (step {position.step}); "
                f"lower optim.lr, use precision.autocast=bf16 instead of fp16, or check the data; "
                f"{self._set_aside_from(self._streak_base())}"
            )

    def run(self) -> dict:
        config, context, position = self.config, self.context, self.position
        metrics = None
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_text("config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
            metrics = MetricsLog(self.run_dir, resume_step=self.resumed_step)
        try:
            return self._train(metrics)
        finally:
            if metrics is not None:
                metrics.close()

    def _train(self, metrics: MetricsLog | None) -> dict:
        config, context, position = self.config, self.context, self.position
        log.info(
            "training %s + %s on %d images of %d classes, %d process(es) x batch %d, %s steps",
            config.model.backbone, config.head.name, len(self.dataset), self.num_classes, context.world_size,
            config.data.batch_size, self.total_steps if not self.time_budget else f"{config.schedule.time_budget_minutes} min of",
        )
        if self.resumed_step is not None and self._done():
            log.warning("the run is already complete at step %d (schedule.stop_after_steps=%d, max_steps or time budget reached): "
                        "nothing to train; --set schedule.stop_after_steps=0 (or a larger value) to go on",
                        position.step, config.schedule.stop_after_steps)
        # A time budget is shown as seconds of training, so the bar's ETA is the budget's end.
        by_time = self.time_budget > 0
        bar = tqdm(total=round(self.time_budget) if by_time else self.total_steps, initial=round(position.elapsed) if by_time else position.step,
                   desc="train", unit="s" if by_time else "step", disable=None if context.is_main else True, dynamic_ncols=True)
        accumulation = config.optim.accumulation
        images_per_step = config.data.batch_size * context.world_size * accumulation
        last_checkpoint = time.monotonic()
        window_losses: list[float] = []
        self.backbone.train()
        self.head.train()
        try:
            while not self._done():
                self.sampler.set_position(position.epoch, position.batch_in_epoch)
                step_start = time.perf_counter()
                for images, labels, skipped in self.loader:
                    position.skipped_bad += skipped
                    if not window_losses:
                        lr = self._set_lr()
                    for callback in self.callbacks:
                        images = callback.on_micro_batch(self, images, labels)
                    window_losses.append(self._micro_step(images, labels, len(window_losses) + 1 == accumulation))
                    position.batch_in_epoch += 1
                    if len(window_losses) < accumulation:
                        continue
                    finite = all(math.isfinite(v) for v in window_losses)
                    finite = self._all_ranks(finite)
                    self._optimizer_step(finite)
                    loss = sum(window_losses) / len(window_losses)
                    window_losses = []
                    position.step += 1
                    seconds = time.perf_counter() - step_start
                    position.elapsed += seconds
                    position.elapsed = context.all_reduce_max(position.elapsed)  # every rank stops together
                    if finite:
                        position.nonfinite_in_a_row = 0
                    else:
                        position.nonfinite_in_a_row += 1
                        position.nonfinite_skipped += 1
                        log.warning("step %d: non-finite loss (%s); step skipped (%d in a row, %d in all)", position.step, loss,
                                    position.nonfinite_in_a_row, position.nonfinite_skipped)
                    self._check_divergence()
                    bar.update(seconds if by_time else 1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4f}", img_s=f"{images_per_step / seconds:.1f}", epoch=position.epoch)
                    if metrics is not None and (position.step % config.log_every == 0 or position.step == 1):
                        metrics.write({"step": position.step, "epoch": position.epoch, "loss": loss, "lr": lr,
                                       "images_per_s": images_per_step / seconds, "elapsed_s": position.elapsed})
                    for callback in self.callbacks:
                        callback.on_step(self, {"step": position.step, "loss": loss, "lr": lr, "finite": finite})
                    done = self._done()
                    # Evaluation before the checkpoint of the same step: the checkpoint then holds the best
                    # accuracy and the RNG state after it, and metrics.jsonl has nothing past the checkpoint.
                    if not done and config.eval.every_steps and position.step % config.eval.every_steps == 0:
                        self._log_eval(metrics)
                    every = config.checkpoint
                    if not done and ((every.every_steps and position.step % every.every_steps == 0)
                                     or (every.every_minutes and time.monotonic() - last_checkpoint >= every.every_minutes * 60)):
                        self._save()
                        last_checkpoint = time.monotonic()
                    if done:
                        break
                    step_start = time.perf_counter()
                else:
                    position.epoch += 1
                    position.batch_in_epoch = 0
                    continue
                break
        finally:
            bar.close()
        evaluation = self._log_eval(metrics)
        if not self._save():
            raise TrainingError(
                f"step {position.step}: the final state holds non-finite values and was not saved; the newest checkpoint with "
                f"finite weights is {self._newest_checkpoint()}: --resume {self.run_dir} with a lower optim.lr"
            )
        summary = {
            "steps": position.step, "epochs": position.epoch + position.batch_in_epoch / max(1, self.sampler.batches_per_epoch()),
            "training_seconds": position.elapsed, "nonfinite_skipped": position.nonfinite_skipped,
            "skipped_bad_samples": position.skipped_bad,
            "best_accuracy": position.best_accuracy if position.best_step >= 0 else None, "best_step": position.best_step,
            "final_eval": evaluation["eval"] if evaluation else None,
        }
        if context.is_main:
            self._write_text("summary.json", json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n")
        return summary

    def _any_rank(self, flag: bool) -> bool:
        return not self._all_ranks(not flag)

    def _all_ranks(self, flag: bool) -> bool:
        if not self.context.distributed:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item() > 0.5)

    def _log_eval(self, metrics) -> dict | None:
        result = self._evaluate()
        if result is not None:
            log.info("step %d: verification %s (best %.4f)", result["step"], result["eval"], result["best_accuracy"])
            if metrics is not None:
                metrics.write(result)
        return result
