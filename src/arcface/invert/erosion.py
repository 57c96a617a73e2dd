"""Random ghosts of the inverted network: each BatchNorm2d output scaled by a random gain per image.

An image optimized against one network picks up what only that network reads. Adversarial examples
transfer better to other networks when every step sees a slightly different network ("ghost networks",
Li et al. 2020: random erosion of a model's layers and skip connections, an ensemble for free). Here
each step multiplies every BatchNorm2d layer's output, per image, by a gain drawn uniformly from
[1 - x, 1 + x]. In a residual unit the last BatchNorm ends the residual branch, so this also erodes
the branch against its skip connection. The BatchNorm prior reads each layer's *input*, so the gain of
a layer changes only the statistics of the layers after it.
"""

from __future__ import annotations

import torch
from torch import nn

from .bn_prior import LayerHooks, batchnorm_layers

__all__ = ["LayerErosion"]


class LayerErosion(LayerHooks):
    """Forward hooks scaling each BatchNorm2d output (B, C, H, W) by a (B, 1, 1, 1) random gain; a context manager.

    Args:
        model: the network whose BatchNorm2d layers (with running statistics) are eroded.
        strength: x, gains uniform in [1 - x, 1 + x]; 0 leaves the network as it is.
        generator: CPU generator the gains are drawn from (same seed, same gains).
    """

    def __init__(self, model: nn.Module, strength: float, generator: torch.Generator):
        if not 0 <= strength < 1:
            raise ValueError(f"erosion strength must be in [0, 1), got {strength}")
        self.layers = batchnorm_layers(model) if strength > 0 else []
        self.strength = strength
        self.generator = generator
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.strength * (2 * torch.rand(output.shape[0], generator=self.generator) - 1)
        return output * gain.to(device=output.device, dtype=output.dtype).view(-1, 1, 1, 1)
