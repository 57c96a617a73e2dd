"""Training augmentation: the warp against a per-pixel reference, each op's property, determinism."""

import math

import pytest
import torch

from arcface.data.augment import AugmentConfig, augment_face, similarity_warp
from arcface.train.config import ConfigError, load_config
from arcface.train.sampler import EpochSampler, FlipEncodedDataset

ALL = AugmentConfig(scale=0.1, shift=0.05, rotate=10, color=0.2, grayscale=0.5, erase=0.5)


def reference_warp(image, zoom, degrees, shift_x, shift_y):
    """Literal: output pixel p shows input point R^-1 (p - c - t) / zoom + c, bilinear, coordinates clamped."""
    channels, height, width = image.shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    out = torch.empty_like(image, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            u, v = x - cx - shift_x * width, y - cy - shift_y * height
            xs = min(max((cos * u + sin * v) / zoom + cx, 0.0), width - 1)
            ys = min(max((-sin * u + cos * v) / zoom + cy, 0.0), height - 1)
            x0, y0 = min(int(math.floor(xs)), width - 2), min(int(math.floor(ys)), height - 2)
            fx, fy = xs - x0, ys - y0
            out[:, y, x] = (
                image[:, y0, x0] * (1 - fx) * (1 - fy) + image[:, y0, x0 + 1] * fx * (1 - fy)
                + image[:, y0 + 1, x0] * (1 - fx) * fy + image[:, y0 + 1, x0 + 1] * fx * fy
            )
    return out


@pytest.mark.parametrize("zoom, degrees, shift_x, shift_y", [(1.0, 0.0, 0.125, 0.0), (1.1, 0.0, 0.0, -0.1), (0.9, 12.0, 0.05, 0.03), (1.0, -30.0, 0.0, 0.0)])
def test_similarity_warp_matches_the_per_pixel_reference(zoom, degrees, shift_x, shift_y):
    torch.manual_seed(0)
    image = torch.rand(3, 12, 16, dtype=torch.float64)  # not square: the aspect correction matters
    torch.testing.assert_close(similarity_warp(image, zoom, degrees, shift_x, shift_y), reference_warp(image, zoom, degrees, shift_x, shift_y))


def test_identity_warp_and_zero_config_leave_the_image_and_the_generator_untouched():
    image = torch.rand(3, 112, 112) * 2 - 1
    torch.testing.assert_close(similarity_warp(image, 1.0, 0.0, 0.0, 0.0), image, atol=1e-4, rtol=0)  # float32 grid
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    assert torch.equal(augment_face(image.clone(), AugmentConfig(), generator), image)
    assert torch.equal(generator.get_state(), state)
    assert not AugmentConfig().enabled and ALL.enabled


def test_integer_shift_moves_pixels():
    image = torch.rand(3, 8, 8)
    shifted = similarity_warp(image, 1.0, 0.0, 2 / 8, 0.0)  # two pixels to the right
    torch.testing.assert_close(shifted[:, :, 2:], image[:, :, :-2])


def test_each_photometric_op_does_what_it_says():
    image = torch.rand(3, 32, 32) * 2 - 1
    gray = augment_face(image, AugmentConfig(grayscale=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(gray[0], (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).clamp(-1, 1))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    for seed in range(20):
        erased = augment_face(image, AugmentConfig(erase=1.0), torch.Generator().manual_seed(seed))
        changed = (erased != image).any(0)
        assert torch.all(erased[:, changed] == 0)
        assert 0.02 * 32 * 32 * 0.7 <= changed.sum() <= 0.2 * 32 * 32 * 1.3  # a 2-20% rectangle (rounding)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        assert changed.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one rectangle
        colored = augment_face(image, AugmentConfig(color=0.3), torch.Generator().manual_seed(seed))
        # brightness b and contrast k about the mean: an affine map of the pixel values, slope in [0.7, 1.3]
        inside = (colored.abs() < 1).flatten()
        slope = torch.linalg.lstsq(torch.stack([image.flatten()[inside], torch.ones(int(inside.sum()))], 1), colored.flatten()[inside, None]).solution[0]
        assert 0.7 - 1e-4 <= slope <= 1.3 + 1e-4


def test_noise_is_zero_mean_white_with_a_per_image_std_in_range_and_unclipped():
    image = torch.rand(3, 112, 112) * 2 - 1
    stds = []
    for seed in range(40):
        residual = augment_face(image, AugmentConfig(noise=0.5), torch.Generator().manual_seed(seed)) - image
        std = residual.std().item()
        stds.append(std)
        assert abs(residual.mean().item()) < 4 * std / math.sqrt(residual.numel()) + 1e-6  # zero mean
        if std > 0.05:  # white: neighbouring pixels uncorrelated, each channel alike
            neighbours = torch.corrcoef(torch.stack([residual[..., :-1].flatten(), residual[..., 1:].flatten()]))[0, 1]
            assert abs(neighbours.item()) < 0.02
            assert max(residual[c].std().item() for c in range(3)) < 1.05 * min(residual[c].std().item() for c in range(3))
    assert max(stds) <= 0.5 * 1.02 and min(stds) < 0.1 and max(stds) > 0.4  # drawn per image in [0, 0.5]
    loud = [augment_face(image, AugmentConfig(noise=2.0), torch.Generator().manual_seed(seed)) for seed in range(3)]
    assert max(x.abs().max().item() for x in loud) > 1.5  # not clipped to [-1, 1]
    assert AugmentConfig(noise=0.1).enabled


def test_augmentation_is_a_function_of_the_generator_and_stays_in_range():
    image = torch.rand(3, 112, 112) * 2 - 1
    first = augment_face(image, ALL, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment_face(image, ALL, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment_face(image, ALL, torch.Generator().manual_seed(4)))
    assert first.min() >= -1 and first.max() <= 1 and first.shape == image.shape


class _Constant(torch.utils.data.Dataset):
    def __init__(self, size):
        self.images = torch.rand(size, 3, 16, 16) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index].clone(), index


def test_sampler_encodes_the_epoch_so_each_epoch_augments_differently():
    data = FlipEncodedDataset(_Constant(8), ALL, seed=1)
    sampler = EpochSampler(8, 4, seed=1, encode_epoch=True)
    seen = {}
    for epoch in range(2):
        sampler.set_position(epoch, 0)
        for batch in sampler:
            for index in batch:
                image, label = data[index]
                assert label == index % 8
                seen.setdefault(label, []).append(image)
                assert torch.equal(image, data[index][0])  # the same index gives the same image
    assert all(len(images) == 2 and not torch.equal(*images) for images in seen.values())
    plain = FlipEncodedDataset(_Constant(8))
    assert torch.equal(plain[9][0], plain.dataset[1][0].flip(-1))


def test_bad_augment_values_name_the_key():
    with pytest.raises(ConfigError, match="data.augment.erase"):
        load_config(None, ["data.augment.erase=1.5"])
    with pytest.raises(ConfigError, match="data.augment.noise"):
        load_config(None, ["data.augment.noise=-0.1"])
    with pytest.raises(ConfigError, match="data.augment.nope"):
        load_config(None, ["data.augment.nope=1"])
    assert load_config(None, ["optim.weight_decay=1e-3"]).optim.weight_decay == 1e-3  # YAML 1.1 reads 1e-3 as text
