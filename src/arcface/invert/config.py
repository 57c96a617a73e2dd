"""Settings of an inversion run (no torch import: the command line reads its defaults from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..input_spec import FACE_SIZE

__all__ = ["IMAGE_SIZE", "PARAMETERIZATIONS", "InversionConfig"]

IMAGE_SIZE = FACE_SIZE
PARAMETERIZATIONS = ("pixels", "fourier")


@dataclass
class InversionConfig:
    """Settings of one inversion run."""

    steps: int = 2000
    lambda_bn: float = 0.05  # the paper's weight of the BatchNorm-statistics prior
    lr: float = 0.05  # Adam on the spectrum (fourier); pixels did best at 0.1
    jitter: int = 4  # random shift of each image each step, in pixels (0: off)
    flip: bool = True  # random horizontal mirror of each image each step
    scale_jitter: float = 0.0  # random zoom of each image each step, by a factor in [1 - x, 1 + x] (0: off)
    rotate_deg: float = 0.0  # random rotation of each image each step, up to this many degrees (0: off)
    color_shift: float = 0.0  # random gain 1 +- x and offset +- x per channel of each image each step (0: off)
    reverse_attack: float = 0.0  # each view first moved one L2 step of length in [0, x] up the task loss (0: off; 8 measured worse)
    parameterization: str = "fourier"  # fourier | pixels (see arcface.invert.parameterization)
    fourier_decay: float = 1.5  # fourier: coefficient scale 1/frequency**decay (1: the natural-image spectrum; 1.5 measured better)
    layer_erosion: float = 0.0  # each step, every BatchNorm2d output of each image scaled by a gain in [1 - x, 1 + x] (0: off; 0.2 no gain over 3 draws)
    coarse_to_fine: float = 0.0  # fourier: share of the steps over which the passed frequencies rise from 4 cycles per image to all (0: off; 0.5 no gain)
    embedding_weight: float = 8.0  # open-set: weight of the L2 loss between normalized embeddings (1 let the prior dominate)
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast of the backbone; the losses stay float32)
    device: str = "cpu"

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.lambda_bn >= 0, f"lambda_bn must be >= 0, got {self.lambda_bn}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.jitter < IMAGE_SIZE // 2, f"jitter must be in [0, {IMAGE_SIZE // 2}), got {self.jitter}"),
            (self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}"),
            (0 <= self.scale_jitter < 1, f"scale_jitter must be in [0, 1), got {self.scale_jitter}"),
            (0 <= self.rotate_deg <= 180, f"rotate_deg must be in [0, 180], got {self.rotate_deg}"),
            (0 <= self.color_shift < 1, f"color_shift must be in [0, 1), got {self.color_shift}"),
            (self.reverse_attack >= 0, f"reverse_attack must be >= 0, got {self.reverse_attack}"),
            (self.parameterization in PARAMETERIZATIONS, f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}"),
            (0 <= self.fourier_decay <= 3, f"fourier_decay must be in [0, 3], got {self.fourier_decay}"),
            (0 <= self.layer_erosion < 1, f"layer_erosion must be in [0, 1), got {self.layer_erosion}"),
            (0 <= self.coarse_to_fine <= 1, f"coarse_to_fine must be in [0, 1], got {self.coarse_to_fine}"),
            (self.embedding_weight > 0, f"embedding_weight must be > 0, got {self.embedding_weight}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)
