"""MobileFaceNet (Chen et al. 2018) in insightface's ``mbf`` configuration (width x2, blocks 1-4-6-2).

Inverted-residual units (1x1 expand - 3x3 depthwise - 1x1 linear projection) and a global
depthwise 7x7 convolution instead of global pooling, then FC + BN to the embedding. Attribute names
follow insightface's ``arcface_torch`` (every level keeps its children in a ``layers`` Sequential)
so its checkpoints load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_face_batch, run_full_precision
from .prelu import PReLU

__all__ = ["MobileFaceNet"]


class Float32Conv2d(nn.Conv2d):
    """A Conv2d that runs in float32 even under autocast (same parameters and state_dict).

    For the stem's grouped convolution (2 channels per group): oneDNN has no fast bf16 kernel for
    it on the CPU. Measured on a 2-core CPU at batch 32 (channels_last, backward): 286 ms in bf16 against 56 ms in
    float32, a quarter of a whole bf16 MobileFaceNet training step.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


class ConvBN(nn.Module):
    """conv (no bias) - BN, followed by PReLU unless ``linear``."""

    def __init__(self, in_channels, out_channels, kernel=1, stride=1, padding=0, groups=1, linear=False):
        super().__init__()
        # Grouped (not depthwise) convolutions are slow in bf16 here; see Float32Conv2d.
        grouped = 1 < groups < in_channels
        conv_class = Float32Conv2d if grouped else nn.Conv2d
        modules = [
            conv_class(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if not linear:
            modules.append(PReLU(out_channels))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class InvertedResidual(nn.Module):
    """1x1 expand to ``hidden`` - 3x3 depthwise (stride) - 1x1 linear projection, + input if residual."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int = 1, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBN(in_channels, hidden),
            ConvBN(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            ConvBN(hidden, out_channels, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStack(nn.Module):
    """``units`` stride-1 residual inverted-residual units at constant width."""

    def __init__(self, channels: int, units: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(*[InvertedResidual(channels, channels, hidden, residual=True) for _ in range(units)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GlobalDepthwiseEmbedding(nn.Module):
    """Global depthwise 7x7 conv (GDC) - BN - flatten - dropout - FC (no bias) - BN."""

    def __init__(self, channels: int, embedding_size: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            ConvBN(channels, channels, kernel=7, groups=channels, linear=True),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        # Dropout sits between flatten and FC but outside `layers` to keep insightface's indices.
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gdc, flatten, fc, norm = self.layers
        return norm(fc(self.dropout(flatten(gdc(x)))))


class MobileFaceNet(nn.Module):
    """MobileFaceNet mapping (B, 3, 112, 112) faces to (B, embedding_size).

    Args:
        embedding_size: D.
        dropout: dropout probability before the FC layer.
        blocks: residual units in the four stacks (insightface's ``mbf``: 1, 4, 6, 2).
        width: channel multiplier (insightface's ``mbf``: 2).

    Input: RGB faces aligned to the 112x112 template, normalized as (pixel - 127.5) / 127.5.
    Output: (B, embedding_size) float32 embedding, not L2-normalized.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.0,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        width: int = 2,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_size = embedding_size
        c64, c128 = 64 * width, 128 * width
        stem = [ConvBN(3, c64, kernel=3, stride=2, padding=1)]
        if blocks[0] == 1:
            stem.append(ConvBN(c64, c64, kernel=3, padding=1, groups=64))
        else:
            stem.append(ResidualStack(c64, blocks[0], hidden=128))
        self.layers = nn.ModuleList(
            stem
            + [
                InvertedResidual(c64, c64, hidden=128, stride=2),
                ResidualStack(c64, blocks[1], hidden=128),
                InvertedResidual(c64, c128, hidden=256, stride=2),
                ResidualStack(c128, blocks[2], hidden=256),
                InvertedResidual(c128, c128, hidden=512, stride=2),
                ResidualStack(c128, blocks[3], hidden=256),
            ]
        )
        self.conv_sep = ConvBN(c128, 512)
        self.features = GlobalDepthwiseEmbedding(512, embedding_size, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) -> (B, 512, 7, 7) feature map before the global depthwise conv."""
        check_face_batch(x)
        for layer in self.layers:
            x = layer(x)
        return self.conv_sep(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) aligned faces -> (B, embedding_size) embeddings."""
        x = self.forward_features(x)
        dtype = self.features.layers[2].weight.dtype
        return run_full_precision(self.features, x, dtype)
