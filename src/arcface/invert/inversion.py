"""ArcFace model inversion: face images of a class center (close-set) or of any embedding (open-set).

Only the trained model is used: its gradients, and the BatchNorm statistics it stored (see
:mod:`arcface.invert.bn_prior`). From random noise, the images are optimized for ``steps`` steps to
minimize

    close-set:  L = margin loss of the head toward the target class + lambda_bn * L_bn
    open-set:   L = w * ||normalize(f(x)) - normalize(target)||^2      + lambda_bn * L_bn

Defaults and why (measured in docs/inversion.md): Adam (lr 0.05, cosine decay to 0) on a
1/frequency**1.5-scaled spectrum of each image (:mod:`arcface.invert.parameterization`), so shapes form
before texture and the images carry less of the high-frequency pattern only this network reads; every
step sees each image randomly shifted (up to ``jitter`` pixels) and mirrored
(:mod:`arcface.invert.augment`; zoom and rotation are options), so the images cannot rely on
pixel-exact patterns read at one position (DeepInversion's observation). Open-set, the L2 term is
weighted by ``embedding_weight`` (8): at 1 the BN prior outweighs it and the images drift from their
target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .augment import ViewAugmentation
from .bn_prior import BNStatistics
from .config import IMAGE_SIZE, InversionConfig
from .erosion import LayerErosion
from .parameterization import ImageParameterization

__all__ = ["InversionConfig", "invert", "invert_classes", "invert_embeddings"]

logger = logging.getLogger(__name__)


def _views(config: InversionConfig) -> ViewAugmentation:
    return ViewAugmentation(jitter=config.jitter, scale=config.scale_jitter, rotate_deg=config.rotate_deg, flip=config.flip,
                            color=config.color_shift)


def _reverse_perturbation(
    backbone: nn.Module,
    task_loss: Callable[[torch.Tensor], torch.Tensor],
    views: torch.Tensor,
    bound: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(B, 3, H, W) detached L2 step up the task loss, of a random length in [0, bound] per image
    (the probe pass runs under the caller's autocast, if any).

    The image must then satisfy the network in a neighbourhood, not at one sharp point: a flat minimum,
    which for adversarial examples transfers better to other networks (reverse adversarial perturbation,
    Qin et al. 2022). For face inversion it did not (26% rank-1 against 38% at length 8,
    docs/inversion.md), so it is an option, off by default."""
    probe = views.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(task_loss(backbone(probe).float()), probe)
    length = torch.rand(len(probe), generator=generator).to(probe.device) * bound
    norm = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (gradient * (length / norm).view(-1, 1, 1, 1)).to(views.dtype)


def invert(
    backbone: nn.Module,
    task_loss: Callable[[torch.Tensor], torch.Tensor],
    count: int,
    config: InversionConfig,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Optimize ``count`` images from noise to minimize ``task_loss(embeddings) + lambda_bn * L_bn``.

    Args:
        backbone: (B, 3, 112, 112) -> (B, D), with BatchNorm2d layers (kept in eval mode, frozen).
        task_loss: (count, D) embeddings -> scalar.
        count: images in the batch.

    Returns:
        (images (count, 3, 112, 112) float32 in [-1, 1] on the CPU, history {"task": [...], "bn": [...]}
        of the losses every step).
    """
    config.validate()
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    images = ImageParameterization(config.parameterization, count, IMAGE_SIZE, generator, device, config.fourier_decay)
    views = _views(config)
    was_training = backbone.training
    backbone.eval()
    requires = [p.requires_grad for p in backbone.parameters()]
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(images.parameters(), lr=config.lr, betas=(0.5, 0.99))
    history: dict[str, list[float]] = {"task": [], "bn": []}
    prior = BNStatistics(backbone, track_gradient=config.lambda_bn > 0)  # at 0, L_bn is only logged
    ghosts = LayerErosion(backbone, config.layer_erosion, generator)
    dtype = torch.bfloat16 if config.precision == "bf16" else None
    try:
        with tqdm(range(config.steps), desc="invert", unit="step", disable=not progress, dynamic_ncols=True) as bar:
            for step in bar:
                lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if config.coarse_to_fine > 0:
                    images.open_band(step / (config.coarse_to_fine * config.steps))
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    # channels-last input: convolutions and the prior's sums run faster on the CPU
                    # (iresnet18, batch 50: 2.42 s/step vs 2.80 bf16, 4.53 vs 5.52 fp32)
                    seen = views(images(), generator).contiguous(memory_format=torch.channels_last)
                    if config.reverse_attack > 0:  # before the prior's hooks: the probe pass is not part of L_bn
                        seen = seen + _reverse_perturbation(backbone, task_loss, seen, config.reverse_attack, generator)
                    with prior, ghosts:
                        embeddings = backbone(seen)
                        bn_loss = prior.loss()
                task = task_loss(embeddings.float())
                loss = task + config.lambda_bn * bn_loss
                loss.backward()
                optimizer.step()
                images.after_step()
                history["task"].append(float(task.detach()))
                history["bn"].append(float(bn_loss.detach()))
                if step % 10 == 0 or step == config.steps - 1:
                    bar.set_postfix(task=f"{history['task'][-1]:.3f}", bn=f"{history['bn'][-1]:.3f}")
    finally:
        for parameter, flag in zip(backbone.parameters(), requires):
            parameter.requires_grad_(flag)
        backbone.train(was_training)
    with torch.no_grad():
        return images().detach().cpu(), history


def invert_classes(
    backbone: nn.Module, head: nn.Module, classes: list[int], config: InversionConfig, starts: int = 1, progress: bool = False
) -> tuple[torch.Tensor, dict]:
    """Close-set: images of class centers, ``starts`` random starts each.

    Args:
        head: the trained margin head (``head(embeddings, labels)`` -> loss), with its class centers.
        classes: class indices in [0, C).

    Returns:
        (images (len(classes), starts, 3, 112, 112), loss history).
    """
    num_classes = getattr(head, "num_classes", None)
    bad = [c for c in classes if c < 0 or (num_classes is not None and c >= num_classes)]
    if bad:
        raise ValueError(f"class indices {bad[:5]} are outside the head's 0..{num_classes - 1}")
    labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(starts).to(config.device)
    head = head.to(config.device).eval()
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    images, history = invert(backbone, lambda embeddings: head(embeddings, labels), len(labels), config, progress)
    return images.view(len(classes), starts, 3, IMAGE_SIZE, IMAGE_SIZE), history


def invert_embeddings(
    backbone: nn.Module, targets: torch.Tensor, config: InversionConfig, starts: int = 1, progress: bool = False
) -> tuple[torch.Tensor, dict]:
    """Open-set: images whose embedding is near each target (squared L2 of the normalized embeddings).

    Args:
        targets: (T, D) embeddings (normalized here).

    Returns:
        (images (T, starts, 3, 112, 112), loss history).
    """
    if targets.ndim != 2:
        raise ValueError(f"targets must be (T, D) embeddings, got shape {tuple(targets.shape)}")
    goal = F.normalize(targets.float(), dim=1).repeat_interleave(starts, dim=0).to(config.device)

    def task(embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.shape[1] != goal.shape[1]:
            raise ValueError(f"the model gives {embeddings.shape[1]}-D embeddings, the targets are {goal.shape[1]}-D")
        return config.embedding_weight * (F.normalize(embeddings, dim=1) - goal).pow(2).sum(dim=1).mean()

    images, history = invert(backbone, task, len(goal), config, progress)
    return images.view(len(targets), starts, 3, IMAGE_SIZE, IMAGE_SIZE), history
