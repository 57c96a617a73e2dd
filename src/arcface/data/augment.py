"""Training augmentation of aligned faces beyond the horizontal flip, drawn from a given generator.

The published recipes use flips only: with millions of images there is no need for more. With a few
thousand images (the LFW CPU recipe: 6,671 images of 1,184 people) a network memorizes the training
set in a few epochs, and small geometric and photometric changes that keep the 5-point alignment
roughly intact are what delays that.

Every random number comes from the ``generator`` argument, so the training sampler can derive it from
(seed, epoch, position): a resumed run sees exactly the augmentations the interrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["AugmentConfig", "augment_face", "similarity_warp"]


@dataclass
class AugmentConfig:
    """Strengths of each augmentation; all zero (the default) leaves images untouched."""

    scale: float = 0.0  # random zoom factor in [1 - scale, 1 + scale]
    shift: float = 0.0  # random translation up to this fraction of the image side, each axis
    rotate: float = 0.0  # random rotation up to this many degrees either way
    color: float = 0.0  # brightness and contrast changes up to this fraction
    grayscale: float = 0.0  # probability of turning the image gray
    erase: float = 0.0  # probability of erasing a random rectangle (2-20% of the area) to gray
    # Gaussian noise added last, its std drawn per image in [0, noise] (images span [-1, 1]), not
    # clipped. Off in the recipes; docs/inversion.md (the noisy fine-tune) measures what it does for
    # inversion.
    noise: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(value > 0 for value in (self.scale, self.shift, self.rotate, self.color, self.grayscale, self.erase, self.noise))

    def validate(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs, as TrainConfig.validate checks them."""
        return [
            (0 <= self.scale < 1, "data.augment.scale must be in [0, 1)"),
            (0 <= self.shift < 0.5, "data.augment.shift must be in [0, 0.5)"),
            (0 <= self.rotate <= 180, "data.augment.rotate must be in [0, 180] degrees"),
            (0 <= self.color < 1, "data.augment.color must be in [0, 1)"),
            (0 <= self.grayscale <= 1, "data.augment.grayscale must be a probability in [0, 1]"),
            (0 <= self.erase <= 1, "data.augment.erase must be a probability in [0, 1]"),
            (0 <= self.noise <= 2, "data.augment.noise must be in [0, 2] (a std; images span [-1, 1])"),
        ]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def similarity_warp(image: torch.Tensor, zoom: float, degrees: float, shift_x: float, shift_y: float) -> torch.Tensor:
    """Zoom by ``zoom`` and rotate by ``degrees`` about the center, then shift; bilinear, edges repeated.

    Args:
        image: (C, H, W) float.
        shift_x, shift_y: translation as a fraction of the image width / height (positive: right / down).

    Returns:
        (C, H, W): output pixel p shows input point ``R^-1 (p - c - t) / zoom + c`` (c: center, t: shift
        in pixels, R: the rotation), sampled bilinearly.
    """
    # affine_grid maps each output location (normalized to [-1, 1]) to the input location it shows.
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    height, width = image.shape[-2:]
    tx, ty = 2 * shift_x, 2 * shift_y  # normalized units: the image spans 2
    # input = A (output - t), with A = R^-1 / zoom = [[cos, sin], [-sin, cos]] / zoom; aspect-corrected.
    a11, a12, a21, a22 = cos, sin * height / width, -sin * width / height, cos
    theta = torch.tensor([[[a11, a12, -(a11 * tx + a12 * ty)], [a21, a22, -(a21 * tx + a22 * ty)]]], dtype=image.dtype)
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def _geometric(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    zoom = _uniform(generator, 1 - config.scale, 1 + config.scale)
    degrees = _uniform(generator, -config.rotate, config.rotate)
    shift_x, shift_y = (_uniform(generator, -config.shift, config.shift) for _ in range(2))
    return similarity_warp(image, zoom, degrees, shift_x, shift_y)


def augment_face(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A randomly changed copy of one aligned face.

    Args:
        image: (3, H, W) float, RGB in [-1, 1] (the output of FaceTransform).
        config: strengths; each zero strength draws no random numbers.
        generator: the source of every random number.

    Returns:
        (3, H, W) float, in [-1, 1] unless ``config.noise`` adds its (unclipped) noise.
    """
    if config.scale or config.shift or config.rotate:
        image = _geometric(image, config, generator)
    if config.color:
        brightness = _uniform(generator, -config.color, config.color)
        contrast = _uniform(generator, 1 - config.color, 1 + config.color)
        mean = image.mean()
        image = (image - mean) * contrast + mean + brightness
    if config.grayscale and float(torch.rand((), generator=generator)) < config.grayscale:
        gray = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
        image = gray.expand_as(image).clone()
    if config.erase and float(torch.rand((), generator=generator)) < config.erase:
        height, width = image.shape[-2:]
        area = _uniform(generator, 0.02, 0.2) * height * width
        aspect = math.exp(_uniform(generator, math.log(0.5), math.log(2.0)))
        box_h = min(height, max(1, round(math.sqrt(area * aspect))))
        box_w = min(width, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, height - box_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - box_w + 1, (), generator=generator))
        image = image.clone()
        image[:, top : top + box_h, left : left + box_w] = 0.0
    image = image.clamp_(-1.0, 1.0)
    if config.noise:
        std = _uniform(generator, 0.0, config.noise)
        image = image + std * torch.randn(image.shape, generator=generator)
    return image
