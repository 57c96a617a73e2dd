"""The BatchNorm-statistics prior of ArcFace inversion.

A trained network stores, in each BatchNorm layer, the running mean and variance of that layer's
input over the training faces. An image batch whose features have those statistics at every layer
looks, to the network, like training data. The prior is

    L_bn = sum over BatchNorm2d layers i of ||mu_i(batch) - mu_i(stored)||_2 + ||sigma_i(batch) - sigma_i(stored)||_2

with mu, sigma the per-channel mean and standard deviation of the layer's input over the batch and
the spatial positions (the paper's formula; sigma rather than the variance, so both terms are in the
units of the features). BatchNorm1d layers (the embedding's) are left out: their statistics are over
the batch alone, undefined for one image and noisy for a few.
"""

from __future__ import annotations

import torch
from torch import nn

from .channel_moments import channel_moments

__all__ = ["BNStatistics", "LayerHooks", "batchnorm_layers"]


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's BatchNorm2d layers that track running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None]


class LayerHooks:
    """Base of a context manager that hooks ``self._hook`` onto the forward of each of ``self.layers``
    on entry and removes the hooks on exit."""

    layers: list[nn.Module]
    _handles: list

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        raise NotImplementedError

    def __enter__(self):
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class BNStatistics(LayerHooks):
    """Forward hooks collecting ``L_bn`` during a forward pass; use as a context manager.

    >>> with BNStatistics(backbone) as prior:
    ...     embeddings = backbone(images)
    ...     loss = task_loss + 0.05 * prior.loss()

    Args:
        track_gradient: False to compute ``L_bn`` for logging only (lambda_bn = 0): the statistics are
            taken of detached features, so the backward pass skips the prior, which otherwise writes a
            gradient the size of every feature map and costs about as much as the network.

    Raises:
        ValueError: the model has no BatchNorm2d layer with running statistics.
    """

    def __init__(self, model: nn.Module, eps: float | None = None, track_gradient: bool = True):
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise ValueError("the model has no BatchNorm2d layers with running statistics: the BN prior needs them")
        self.eps = eps
        self.track_gradient = track_gradient
        self._terms: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # In the features' own dtype (bf16 under autocast), no float32 copy of the feature map; on the
        # CPU by matrix products (channel_moments.py; benchmarks/inversion_speed.py, docs/inversion.md).
        features = inputs[0] if self.track_gradient else inputs[0].detach()
        variance, mean = channel_moments(features)
        self._record(module, variance, mean)

    def _record(self, module: nn.BatchNorm2d, variance: torch.Tensor, mean: torch.Tensor) -> None:
        """Add the layer's term from the batch's (C,) float32 variance and mean."""
        eps = module.eps if self.eps is None else self.eps
        std, stored_std = torch.sqrt(variance + eps), torch.sqrt(module.running_var.float() + eps)
        self._terms.append(torch.linalg.vector_norm(mean - module.running_mean.float()) + torch.linalg.vector_norm(std - stored_std))

    def __enter__(self) -> "BNStatistics":
        self._terms = []
        return super().__enter__()

    def loss(self) -> torch.Tensor:
        """Sum of the per-layer terms of the forward passes made inside the context (then reset)."""
        if not self._terms:
            raise RuntimeError("no forward pass through a BatchNorm2d layer was recorded")
        total = torch.stack(self._terms).sum()
        self._terms = []
        return total
