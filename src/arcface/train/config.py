"""Typed training configuration: nested dataclasses, YAML defaults, ``--set key=value`` overrides.

A run folder holds the resolved ``config.yaml``; every checkpoint holds the same dict, so a checkpoint
alone says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.augment import AugmentConfig

__all__ = [
    "DataConfig",
    "ModelConfig",
    "HeadConfig",
    "OptimConfig",
    "ScheduleConfig",
    "PrecisionConfig",
    "CheckpointConfig",
    "EvalConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "ConfigError",
]


class ConfigError(ValueError):
    """A bad config file or value; the message names the key."""


@dataclass
class DataConfig:
    source: str = "synthetic:2048:64"  # .rec, image folder, "path label" list file, or synthetic:N:C
    root: str | None = None  # image root for a list file (default: the list file's folder)
    batch_size: int = 128  # per process
    num_workers: int = 2  # DataLoader worker processes
    flip: bool = True  # random horizontal flip
    skip_bad: bool = False  # skip (and count) corrupt images instead of stopping
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # beyond flips: for small datasets


@dataclass
class ModelConfig:
    backbone: str = "iresnet50"  # a name from arcface.backbones.list_backbones()
    embedding_size: int = 512
    dropout: float = 0.0
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and GPU (tensor cores)
    activation_checkpointing: bool = False  # IResNets: recompute activations in backward
    # torch.compile the training forward/backward (1.20x images/s for IResNet-18 bf16 on a 2-core CPU,
    # benchmarks/train.py); the first step pays the compilation (51 s there, 9 s with a warm cache).
    # Checkpoints and evaluation use the plain module. Falls back to eager, with a warning, where
    # compilation fails.
    compile: bool = False
    # A checkpoint or run folder whose backbone weights start this training (fine-tuning, e.g. after
    # `arcface clean`, with head.init_from); same backbone and embedding size. None: random init.
    init_from: str | None = None


@dataclass
class HeadConfig:
    name: str = "arcface"  # a name from arcface.heads.list_heads()
    scale: float | None = None  # None: the preset's (64)
    m1: float | None = None
    m2: float | None = None
    m3: float | None = None
    sub_centers: int | None = None  # None: the preset's (subcenter_arcface: 3, the others: 1)
    init_from: str | None = None  # (C, D) centers to start from: dominant_centers.pt of `arcface clean`, or a checkpoint / run folder (fine-tuning)
    sample_rate: float = 1.0  # partial FC: fraction of each rank's class centers used per step
    cosine_precision: str = "auto"  # auto | autocast | float32: dtype of the (B, C) cosine product under autocast (margin heads)
    options: dict = field(default_factory=dict)  # further create_head arguments (pi_region, intra_weight, ...)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # for the global batch given in the config, not rescaled with the world size
    momentum: float = 0.9  # sgd
    weight_decay: float = 5e-4
    betas: tuple = (0.9, 0.999)  # adamw
    grad_clip: float = 5.0  # max global norm of the backbone gradient; 0 disables
    accumulation: int = 1  # micro-batches per optimizer step (the loss is divided by it)


@dataclass
class ScheduleConfig:
    epochs: float = 20.0  # length of training in passes over the data ...
    max_steps: int = 0  # ... or in optimizer steps (wins when > 0)
    time_budget_minutes: float = 0.0  # > 0: stop after this much training time; the decay follows time
    warmup_fraction: float = 0.0  # fraction of training with a linear warmup from 0
    power: float = 2.0  # polynomial decay exponent (insightface's PolyScheduler)
    stop_after_steps: int = 0  # > 0: stop (with a checkpoint) at this step without changing the schedule


@dataclass
class PrecisionConfig:
    autocast: str = "bf16"  # none | bf16 | fp16 (fp16 on GPU only, with a GradScaler)
    max_nonfinite_in_a_row: int = 10  # stop after this many skipped non-finite steps in a row


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # 0 disables step-based checkpoints
    every_minutes: float = 10.0  # 0 disables time-based checkpoints
    # Checkpoints kept; besides them, the newest one whose next step had a finite loss is never deleted
    # (with keep_last=1 there are then two), so a divergence cannot rotate the last good state out.
    keep_last: int = 3


@dataclass
class EvalConfig:
    pairs: str | None = None  # a pairs file (LFW format or pairs.tsv) ...
    images: str | None = None  # ... and the aligned image root its paths are relative to
    bins: list = field(default_factory=list)  # .bin verification sets
    every_steps: int = 0  # 0: only at the end
    batch_size: int = 64


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads per process; 0: PyTorch's default
    log_every: int = 10  # steps between metric lines

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key: every number finite, every value in its range."""
        for key, value in _numbers(self):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            if isinstance(value, int) and abs(value) >= 2**63:
                raise ConfigError(f"{key}: {value} is out of range")
        optim, schedule, head = self.optim, self.schedule, self.head
        checks = [
            (bool(self.data.source.strip()), "data.source must name a dataset"),
            (self.data.batch_size >= 1, "data.batch_size must be >= 1"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            *self.data.augment.validate(),
            (self.model.embedding_size >= 1, "model.embedding_size must be >= 1"),
            (0 <= self.model.dropout < 1, "model.dropout must be in [0, 1)"),
            (optim.name in ("sgd", "adamw"), f"optim.name must be sgd or adamw, got {optim.name!r}"),
            (optim.lr > 0, "optim.lr must be > 0"),
            (0 <= optim.momentum < 1, "optim.momentum must be in [0, 1)"),
            (optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (len(optim.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in optim.betas),
             f"optim.betas must be two numbers in [0, 1), got {list(optim.betas)}"),
            (optim.accumulation >= 1, "optim.accumulation must be >= 1"),
            (optim.grad_clip >= 0, "optim.grad_clip must be >= 0"),
            (head.scale is None or head.scale > 0, "head.scale must be > 0"),
            (head.m1 is None or head.m1 > 0, "head.m1 must be > 0"),
            (0 < head.sample_rate <= 1, "head.sample_rate must be in (0, 1]"),
            (head.sub_centers is None or head.sub_centers >= 1, "head.sub_centers must be >= 1"),
            (schedule.epochs >= 0, "schedule.epochs must be >= 0"),
            (schedule.max_steps >= 0, "schedule.max_steps must be >= 0 (0: use schedule.epochs)"),
            (schedule.time_budget_minutes >= 0, "schedule.time_budget_minutes must be >= 0"),
            (schedule.epochs > 0 or schedule.max_steps > 0 or schedule.time_budget_minutes > 0,
             "one of schedule.epochs, schedule.max_steps, schedule.time_budget_minutes must be > 0"),
            (0 <= schedule.warmup_fraction < 1, "schedule.warmup_fraction must be in [0, 1)"),
            (schedule.power >= 0, "schedule.power must be >= 0"),
            (schedule.stop_after_steps >= 0, "schedule.stop_after_steps must be >= 0 (0: no early stop)"),
            (self.precision.autocast in ("none", "bf16", "fp16"), f"precision.autocast must be none, bf16 or fp16, got {self.precision.autocast!r}"),
            (self.precision.max_nonfinite_in_a_row >= 1, "precision.max_nonfinite_in_a_row must be >= 1"),
            (self.checkpoint.every_steps >= 0, "checkpoint.every_steps must be >= 0 (0: no step-based checkpoints)"),
            (self.checkpoint.every_minutes >= 0, "checkpoint.every_minutes must be >= 0 (0: no time-based checkpoints)"),
            (self.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1"),
            (self.eval.every_steps >= 0, "eval.every_steps must be >= 0 (0: only at the end)"),
            (self.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
            ((self.eval.pairs is None) == (self.eval.images is None), "eval.pairs and eval.images go together"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.threads >= 0, "threads must be >= 0 (0: PyTorch's default)"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any, key: str = "") -> typing.Iterator[tuple[str, int | float]]:
    """(dotted key, number) for every number in a config, nested sections, lists and option dicts included."""
    if dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            yield from _numbers(getattr(value, item.name), f"{key}.{item.name}" if key else item.name)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _numbers(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{key}[{index}]")
    elif _is_number(value):
        yield key, value


# ----------------------------------------------------------------------------- dict <-> dataclass
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert a YAML value to the annotated type, naming the key on failure."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {annotation}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _from_dict(annotation, value, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if annotation in (dict, list, tuple):
        if isinstance(value, (list, tuple)) and annotation is tuple:
            return tuple(value)
        if isinstance(value, annotation):
            return value
        raise ConfigError(f"{key}: expected a {annotation.__name__}, got {value!r}")
    return value


def _from_dict(cls, values: dict, prefix: str = ""):
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s): {', '.join(where + k for k in unknown)}; known: {', '.join(types_)}")
    kwargs = {name: _coerce(value, types_[name], f"{prefix}.{name}" if prefix else name) for name, value in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict) -> TrainConfig:
    config = _from_dict(TrainConfig, values or {})
    config.validate()
    return config


def config_to_dict(config: TrainConfig) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """``["optim.lr=0.05", "model.backbone=iresnet18"]`` applied to a nested dict (YAML-typed values)."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {override!r}")
        target = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
        try:
            target[parts[-1]] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: cannot parse {text!r}: {error}") from error
    return values


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides, checked. Raises ConfigError naming the bad key."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(apply_overrides(values, overrides or []))
