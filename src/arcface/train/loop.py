"""The training loop: one process on CPU/GPU, or DDP backbone + model-parallel head under torchrun.

``train(config, run_dir)`` writes into ``run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``
(one JSON line per logged step and per evaluation), ``checkpoints/step_*.pt`` (atomic, keep-last-N),
``best.pt`` (best verification accuracy) and ``summary.json``. ``train(..., resume=True)`` continues
from the newest checkpoint exactly where it stopped: same data order, flips, RNG and optimizer state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..backbones import create_backbone
from ..data.datasets import FaceTransform, build_dataset
from ..input_spec import DEFAULT_INPUT_SPEC
from ..heads.partial_fc import PartialFCHead
from .checkpoint import atomic_torch_save, initial_backbone_weights, load_latest, save_checkpoint
from .config import TrainConfig, apply_overrides, config_from_dict, config_to_dict
from .distributed import DistributedContext
from .metrics import MetricsLog
from .head_state import (
    build_training_head,
    head_full_state,
    load_head_full_state,
    load_optimizer_full_state,
    optimizer_full_state,
)
from .sampler import EpochSampler, FlipEncodedDataset
from .schedule import lr_factor

__all__ = ["train", "TrainingError"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why and what to try."""


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch consumed
    elapsed: float = 0.0  # seconds of training (excluding evaluation and checkpointing)
    nonfinite_skipped: int = 0
    best_accuracy: float = -1.0
    best_step: int = -1


def train(
    config: TrainConfig | None, run_dir: str | Path, resume: bool = False, fallback: bool = False, overrides: list[str] | None = None
) -> dict:
    """Train according to ``config`` into ``run_dir``; returns the summary (also in summary.json).

    With ``resume=True`` the config saved in the newest checkpoint is used, with ``overrides``
    (``key=value``) applied on top: changing the recipe there gives up bit-exact continuation, but
    ``schedule.stop_after_steps``, ``checkpoint.*``, ``eval.*`` and ``data.num_workers`` are safe.
    """
    context = DistributedContext.from_environment(config.device if config is not None else "auto")
    try:
        return _Run(config, Path(run_dir), context, resume, fallback, overrides or []).run()
    finally:
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


class _Run:
    def __init__(self, config: TrainConfig | None, run_dir: Path, context: DistributedContext, resume: bool, fallback: bool, overrides: list[str]):
        self.run_dir, self.context = run_dir, context
        self.device = context.device
        resumed = None
        if resume:
            path, resumed = load_latest(run_dir, fallback)
            log.info("resuming from %s (step %d)", path, resumed["step"])
            config = config_from_dict(apply_overrides(resumed["config"], overrides))
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
            pin_memory=self.device.type == "cuda", persistent_workers=False,
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
        self.backbone.load_state_dict(state["backbone"])
        load_head_full_state(self.head, state["head"])
        self.backbone_optimizer.load_state_dict(state["backbone_optimizer"])
        load_optimizer_full_state(self.head_optimizer, self.head, state["head_optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.position = Position(**state["position"])
        same_layout = state["world_size"] == self.context.world_size
        if same_layout:
            torch.set_rng_state(state["rng"][self.context.rank])
            if isinstance(self.head, PartialFCHead) and state["head_sampler"][self.context.rank] is not None:
                self.head.load_sampler_state(state["head_sampler"][self.context.rank])
        else:
            log.info("resuming %d processes from a checkpoint of %d: class centers re-split", self.context.world_size, state["world_size"])
            torch.manual_seed(self.config.seed * 7919 + 1 + self.context.rank + 104729 * self.position.step)

    def _save(self) -> None:
        state = self._state()
        if self.context.is_main:
            path = save_checkpoint(state, self.run_dir, self.position.step, self.config.checkpoint.keep_last)
            log.debug("saved %s", path)
        self.context.barrier()

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
            self.position.best_accuracy, self.position.best_step = accuracy, self.position.step
            state = self._state()
            if self.context.is_main:
                atomic_torch_save(state, self.run_dir / "best.pt")
            self.context.barrier()
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

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
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
                embeddings = self._forward(images)
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

    def run(self) -> dict:
        config, context, position = self.config, self.context, self.position
        metrics = None
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
            metrics = MetricsLog(self.run_dir)
        log.info(
            "training %s + %s on %d images of %d classes, %d process(es) x batch %d, %s steps",
            config.model.backbone, config.head.name, len(self.dataset), self.num_classes, context.world_size,
            config.data.batch_size, self.total_steps if not self.time_budget else f"{config.schedule.time_budget_minutes} min of",
        )
        # A time budget is shown as seconds of training, so the bar's ETA is the budget's end.
        by_time = self.time_budget > 0
        bar = tqdm(total=round(self.time_budget) if by_time else self.total_steps, initial=round(position.elapsed) if by_time else position.step,
                   desc="train", unit="s" if by_time else "step", disable=None if context.is_main else True, dynamic_ncols=True)
        accumulation = config.optim.accumulation
        images_per_step = config.data.batch_size * context.world_size * accumulation
        last_checkpoint = time.monotonic()
        in_a_row = 0
        window_losses: list[float] = []
        self.backbone.train()
        self.head.train()
        try:
            while not self._done():
                self.sampler.set_position(position.epoch, position.batch_in_epoch)
                step_start = time.perf_counter()
                for images, labels in self.loader:
                    if not window_losses:
                        lr = self._set_lr()
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
                        in_a_row = 0
                    else:
                        in_a_row += 1
                        position.nonfinite_skipped += 1
                        log.warning("step %d: non-finite loss (%s); step skipped (%d in a row, %d in all)", position.step, loss, in_a_row, position.nonfinite_skipped)
                        if in_a_row >= config.precision.max_nonfinite_in_a_row:
                            raise TrainingError(
                                f"the loss was non-finite for {in_a_row} steps in a row (step {position.step}); "
                                f"lower optim.lr, use precision.autocast=bf16 instead of fp16, or check the data"
                            )
                    bar.update(seconds if by_time else 1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4f}", img_s=f"{images_per_step / seconds:.1f}", epoch=position.epoch)
                    if metrics is not None and (position.step % config.log_every == 0 or position.step == 1):
                        metrics.write({"step": position.step, "epoch": position.epoch, "loss": loss, "lr": lr,
                                       "images_per_s": images_per_step / seconds, "elapsed_s": position.elapsed})
                    done = self._done()
                    every = config.checkpoint
                    if not done and ((every.every_steps and position.step % every.every_steps == 0)
                                     or (every.every_minutes and time.monotonic() - last_checkpoint >= every.every_minutes * 60)):
                        self._save()
                        last_checkpoint = time.monotonic()
                    if not done and config.eval.every_steps and position.step % config.eval.every_steps == 0:
                        self._log_eval(metrics)
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
        self._save()
        evaluation = self._log_eval(metrics)
        summary = {
            "steps": position.step, "epochs": position.epoch + position.batch_in_epoch / max(1, self.sampler.batches_per_epoch()),
            "training_seconds": position.elapsed, "nonfinite_skipped": position.nonfinite_skipped,
            "best_accuracy": position.best_accuracy if position.best_step >= 0 else None, "best_step": position.best_step,
            "final_eval": evaluation["eval"] if evaluation else None,
        }
        if metrics is not None:
            metrics.close()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary

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
