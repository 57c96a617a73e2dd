"""IResNet: the ArcFace paper's "ResNet without bottleneck" (improved residual units).

Each unit is BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a shortcut (conv1x1(stride)-BN when the
shape changes); the stem is conv3x3-BN-PReLU at full 112x112 resolution; four stages halve the map
to 7x7; the output block is BN-dropout-FC-BN giving the embedding (the last BN's scale is fixed
to 1, as in insightface). Attribute names follow insightface's ``arcface_torch`` so its checkpoints
load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .checkpointing import checkpointed
from .common import INPUT_SIZE, check_face_batch, run_full_precision
from .prelu import PReLU

__all__ = ["IResNet", "IRBlock", "IRESNET_DEPTHS"]

BN_EPS = 1e-5

# Units per stage.
IRESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """Improved residual unit: BN-conv-BN-PReLU-conv(stride)-BN, plus the (projected) input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet-{18,34,50,100,200} mapping (B, 3, 112, 112) faces to (B, embedding_size).

    Args:
        depth: one of ``IRESNET_DEPTHS``.
        embedding_size: D of the output embedding.
        dropout: dropout probability before the FC layer (insightface uses 0 for MS1M, 0.4 on
            small datasets such as CASIA-WebFace).
        activation_checkpointing: in training, recompute each unit's activations in backward
            instead of storing them (less memory, ~1/3 more compute); BN statistics stay exact.

    Input: RGB faces aligned to the 112x112 ArcFace template, normalized as (pixel - 127.5) / 127.5.
    Output: (B, embedding_size) float32 embedding, not L2-normalized.
    """

    def __init__(
        self,
        depth: int,
        embedding_size: int = 512,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if depth not in IRESNET_DEPTHS:
            raise ValueError(f"IResNet depth must be one of {sorted(IRESNET_DEPTHS)}, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth = depth
        self.embedding_size = embedding_size
        self.activation_checkpointing = activation_checkpointing
        self.conv1 = _conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=BN_EPS)
        self.prelu = PReLU(STAGE_WIDTHS[0])
        in_channels = STAGE_WIDTHS[0]
        for index, (units, width) in enumerate(zip(IRESNET_DEPTHS[depth], STAGE_WIDTHS), start=1):
            blocks = [IRBlock(in_channels, width, stride=2)] + [IRBlock(width, width) for _ in range(units - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_channels = width
        final_map = INPUT_SIZE // 16
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * final_map * final_map, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The embedding BN only centers and rescales per dimension; its scale is fixed at 1.
        self.features.weight.requires_grad_(False)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) -> (B, 512, 7, 7) feature map after the last BN."""
        check_face_batch(x)
        x = self.prelu(self.bn1(self.conv1(x)))
        use_checkpoints = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            for block in stage:
                x = checkpointed(block, x) if use_checkpoints else block(x)
        return self.bn2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) aligned faces -> (B, embedding_size) embeddings."""
        x = self.dropout(torch.flatten(self.forward_features(x), 1))
        return run_full_precision(lambda flat: self.features(self.fc(flat)), x, self.fc.weight.dtype)
