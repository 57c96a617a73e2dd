"""How the images being inverted are parameterized: raw pixels, or a 1/f-scaled Fourier spectrum.

``pixels``: the optimizer moves every pixel independently (clamped to [-1, 1] after each step). Adam
moves high and low frequencies at the same rate, so images fill with high-frequency patterns that the
inverted network responds to but another network does not.

``fourier``: the optimizer moves the coefficients of each image's 2-D spectrum, each multiplied by
1 / frequency**decay, so low frequencies (shapes, shading) change fastest and high frequencies
(texture, noise) slowest; a tanh maps the result into [-1, 1]. With decay 1 this is the decorrelated
parameterization of feature visualization (Olah et al., Distill 2017), the spectrum of natural images;
the inversion default 1.5 damps the checkerboard texture of the strided convolutions further
(docs/inversion.md). The lowest frequency's scale is size/4 whatever the decay.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PARAMETERIZATIONS

__all__ = ["ImageParameterization"]


class ImageParameterization(nn.Module):
    """Holds the optimized tensor; ``forward()`` gives the images (B, 3, H, W) in [-1, 1]."""

    def __init__(self, kind: str, count: int, size: int, generator: torch.Generator, device: torch.device, decay: float = 1.0):
        super().__init__()
        if kind not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {kind!r}")
        self.kind = kind
        self.size = size
        if kind == "pixels":
            start = torch.randn(count, 3, size, size, generator=generator).mul_(0.5).clamp_(-1, 1)
            self.register_buffer("frequency_scale", torch.ones(()), persistent=False)
        else:
            rows = torch.fft.fftfreq(size)[:, None]
            cols = torch.fft.rfftfreq(size)[None, :]
            frequency = torch.sqrt(rows**2 + cols**2).clamp_min(1.0 / size)
            self.register_buffer("frequency_scale", (size / 4) * (frequency * size) ** -decay, persistent=False)
            self.register_buffer("cycles", frequency * size, persistent=False)  # cycles per image, 1 .. ~79
            self.register_buffer("band", torch.ones_like(frequency), persistent=False)
            start = torch.randn(count, 3, size, size // 2 + 1, 2, generator=generator).mul_(0.01)
        self.values = nn.Parameter(start)
        self._gradient_mask = None  # the hook of open_band, registered on its first call
        self.to(device)  # the values and the frequency scale, together

    def forward(self) -> torch.Tensor:
        if self.kind == "pixels":
            return self.values
        spectrum = torch.view_as_complex(self.values) * (self.frequency_scale * self.band)
        return torch.tanh(torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho"))

    @torch.no_grad()
    def open_band(self, fraction: float, lowest_cycles: float = 4.0) -> None:
        """Coarse to fine (fourier only): pass frequencies up to a cutoff that rises geometrically from
        ``lowest_cycles`` cycles per image at ``fraction`` 0 to all of them at 1 (a soft, Butterworth
        edge, so no ringing). Only coefficients passed at least half (at or below the cutoff) are
        trained: the others' gradients are zeroed. Damping the gradient would not do, since Adam
        normalizes each coefficient's step: a damped coefficient would move at full rate unseen and
        show all at once when its band opens."""
        if self.kind == "pixels":
            return
        if self._gradient_mask is None:
            self._gradient_mask = self.values.register_hook(lambda gradient: gradient * (self.band >= 0.5)[..., None])
        if fraction >= 1:
            self.band.fill_(1.0)
            return
        top = float(self.cycles.max())
        cutoff = lowest_cycles * (top / lowest_cycles) ** max(fraction, 0.0)
        torch.div(self.cycles, cutoff, out=self.band).pow_(8).add_(1).reciprocal_()

    @torch.no_grad()
    def after_step(self) -> None:
        """Keeps pixel images inside [-1, 1] (the Fourier images are bounded by their tanh)."""
        if self.kind == "pixels":
            self.values.clamp_(-1.0, 1.0)
