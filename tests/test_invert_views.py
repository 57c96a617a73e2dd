"""Inversion's random views and image parameterizations: against the formulas they implement."""

import math

import numpy as np
import pytest
import torch

from arcface.invert import InversionConfig
from arcface.invert.augment import ViewAugmentation
from arcface.invert.parameterization import ImageParameterization


def test_identity_views_return_the_images_and_seeds_repeat():
    images = torch.rand(3, 3, 16, 16)
    assert ViewAugmentation()(images, torch.Generator().manual_seed(0)) is images
    views = ViewAugmentation(jitter=3, scale=0.1, rotate_deg=10, flip=True, color=0.2)
    first = views(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, views(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, views(images, torch.Generator().manual_seed(6)))


def test_mirror_views_are_exact_mirrors_of_each_image():
    images = torch.rand(40, 3, 12, 12)
    out = ViewAugmentation(flip=True)(images, torch.Generator().manual_seed(0))
    same = (out - images).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - images.flip(3)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same | mirrored).all())
    assert 5 < int(mirrored.sum()) < 35  # each image draws its own mirror


def test_shift_views_are_whole_pixel_shifts_of_each_image():
    jitter, size = 3, 20
    images = torch.rand(12, 2, size, size)
    out = ViewAugmentation(jitter=jitter)(images, torch.Generator().manual_seed(1))
    inner = slice(jitter, size - jitter)  # reflection padding only touches the border
    shifts = set()
    for view, image in zip(out, images):
        found = [(dy, dx) for dy in range(-jitter, jitter + 1) for dx in range(-jitter, jitter + 1)
                 if torch.allclose(view[:, inner, inner], torch.roll(image, (-dy, -dx), (1, 2))[:, inner, inner], atol=1e-5)]
        assert len(found) == 1, "each view must be exactly one whole-pixel shift of its image"
        shifts.add(found[0])
    assert len(shifts) > 3


def test_zoom_and_rotation_views_sample_where_the_affine_map_says():
    """A centred bright disc stays centred; a zoom changes its area by 1/zoom^2; rotation keeps it."""
    size = 64
    y, x = torch.meshgrid(torch.arange(size) + 0.5 - size / 2, torch.arange(size) + 0.5 - size / 2, indexing="ij")
    disc = ((x**2 + y**2) < 12**2).float().expand(1, 1, size, size).repeat(200, 1, 1, 1)
    out = ViewAugmentation(scale=0.2, rotate_deg=30)(disc, torch.Generator().manual_seed(2))
    areas = out.sum((1, 2, 3)) / disc[0].sum()
    assert 1 / 1.2**2 - 0.05 < float(areas.min()) and float(areas.max()) < 1 / 0.8**2 + 0.05
    assert float(areas.std()) > 0.05  # zooms really vary
    centre_x = (out[:, 0] * x).sum((1, 2)) / out[:, 0].sum((1, 2))
    assert float(centre_x.abs().max()) < 0.5


def test_color_views_are_one_gain_and_offset_per_channel_of_each_image():
    """Each view's channel is a * x + b of the image's (least squares recovers a, b exactly), with a in
    [1 - c, 1 + c] and b in [-c, c], drawn anew for every image and channel."""
    color = 0.3
    images = torch.rand(30, 3, 10, 10, dtype=torch.float64) * 2 - 1
    views = ViewAugmentation(color=color)(images, torch.Generator().manual_seed(4))
    x, y = images.flatten(2), views.flatten(2)  # (B, C, P)
    design = torch.stack([x, torch.ones_like(x)], dim=-1)  # (B, C, P, 2)
    solution = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)  # (B, C, 2)
    gain, offset = solution[..., 0], solution[..., 1]
    torch.testing.assert_close((design @ solution.unsqueeze(-1)).squeeze(-1), y)
    assert float((gain - 1).abs().max()) <= color + 1e-9 and float(offset.abs().max()) <= color + 1e-9
    assert float(gain.std()) > color / 4 and float(offset.std()) > color / 4  # really random, per image and channel
    assert float((gain[:, 0] - gain[:, 1]).abs().mean()) > color / 10


def test_color_views_follow_the_geometric_view():
    """With shifts and a colour shift, the view is the geometric view with its colours changed."""
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    both = ViewAugmentation(jitter=2, flip=True, color=0.2)(images, torch.Generator().manual_seed(9))
    geometric = ViewAugmentation(jitter=2, flip=True)(images, torch.Generator().manual_seed(9))
    x, y = geometric.flatten(2).double(), both.flatten(2).double()
    design = torch.stack([x, torch.ones_like(x)], dim=-1)
    fitted = (design @ torch.linalg.lstsq(design, y.unsqueeze(-1)).solution).squeeze(-1)
    torch.testing.assert_close(fitted, y, atol=1e-5, rtol=0)
    assert not torch.allclose(both, geometric)


def test_views_pass_gradients_to_the_images():
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    ViewAugmentation(jitter=2, scale=0.1, rotate_deg=5, flip=True, color=0.2)(images, torch.Generator().manual_seed(0)).sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def reference_fourier_image(values: np.ndarray, size: int, decay: float, cutoff: float | None = None) -> np.ndarray:
    """Literal inverse DFT of the half spectrum (rfft layout), orthonormal, 1/frequency**decay scaled, then tanh.

    x[m, n] = Re( 1/N * sum_k sum_l w_l * c(k, l) * X[k, l] * exp(2 pi i (k m + l n) / N) ), w_l = 1 for
    the columns that are their own mirror (l = 0, N/2) and 2 for the others,
    c = N/4 * (N * max(|f|, 1/N))^-decay, times 1 / (1 + (N * max(|f|, 1/N) / cutoff)^8) with a cutoff.
    """
    spectrum = values[..., 0] + 1j * values[..., 1]  # (3, N, N/2+1)
    image = np.zeros((3, size, size))
    for k in range(size):
        fk = k / size if k < (size + 1) // 2 else (k - size) / size
        for l in range(size // 2 + 1):
            weight = 1 if l in (0, size // 2) else 2
            cycles = size * max(math.hypot(fk, l / size), 1 / size)
            scale = size / 4 * cycles**-decay * (1 if cutoff is None else 1 / (1 + (cycles / cutoff) ** 8))
            m, n = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
            wave = np.exp(2j * np.pi * (k * m + l * n) / size)
            image += np.real(weight * scale * spectrum[:, k, l, None, None] * wave) / size
    return np.tanh(image)


@pytest.mark.parametrize("decay", [1.0, 1.5])
def test_fourier_images_follow_the_formula(decay):
    size = 8
    param = ImageParameterization("fourier", 2, size, torch.Generator().manual_seed(0), torch.device("cpu"), decay)
    with torch.no_grad():
        param.values.normal_(0, 0.3)
    ours = param().detach().double().numpy()
    for i in range(2):
        reference = reference_fourier_image(param.values[i].detach().double().numpy(), size, decay)
        np.testing.assert_allclose(ours[i], reference, atol=1e-5)


def test_coarse_to_fine_band_follows_the_formula():
    """open_band(t, lowest) passes 1 / (1 + (cycles / cutoff)^8), cutoff = lowest * (top / lowest)^t."""
    size, lowest = 8, 1.0
    param = ImageParameterization("fourier", 2, size, torch.Generator().manual_seed(0), torch.device("cpu"), 1.5)
    with torch.no_grad():
        param.values.normal_(0, 0.3)
    unbanded = param().detach()
    top = size * math.hypot(0.5, 0.5)  # the highest frequency of the rfft layout: (N/2, N/2)
    for fraction in (0.0, 0.4):
        param.open_band(fraction, lowest_cycles=lowest)
        reference = reference_fourier_image(param.values[0].detach().double().numpy(), size, 1.5, lowest * (top / lowest) ** fraction)
        np.testing.assert_allclose(param()[0].detach().double().numpy(), reference, atol=1e-5)
    param.open_band(1.0)
    assert torch.equal(param().detach(), unbanded)  # fully open: exactly the images without a band


def test_a_closed_band_trains_only_the_coefficients_it_passes():
    param = ImageParameterization("fourier", 1, 112, torch.Generator().manual_seed(0), torch.device("cpu"), 1.5)
    param.open_band(0.0)  # about 4 cycles per image pass
    param().square().sum().backward()
    gradient = torch.view_as_complex(param.values.grad).abs()[0, 0]  # (112, 57): rows, then columns, of frequency
    passed = param.band >= 0.5
    assert passed[1, 1] and passed[0, 4] and not passed[0, 5] and not passed[30, 30]  # cutoff: 4 cycles per image
    assert (gradient[passed] > 0).all() and (gradient[~passed] == 0).all()  # Adam moves only what is shown
    pixels = ImageParameterization("pixels", 1, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    before = pixels().detach().clone()
    pixels.open_band(0.0)  # no spectrum: nothing to band
    assert torch.equal(pixels().detach(), before)


def test_fourier_starts_smooth_and_pixels_stay_in_range():
    generator = torch.Generator().manual_seed(0)
    fourier = ImageParameterization("fourier", 4, 112, generator, torch.device("cpu"))().detach()
    pixels = ImageParameterization("pixels", 4, 112, generator, torch.device("cpu"))
    # neighbouring pixels of a 1/f image are strongly correlated, those of white noise are not
    def neighbour_correlation(images):
        a, b = images[..., :, :-1].flatten(), images[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert neighbour_correlation(fourier) > 0.5 > abs(neighbour_correlation(pixels().detach()))
    with torch.no_grad():
        pixels.values.mul_(10)
    pixels.after_step()
    assert float(pixels().detach().abs().max()) <= 1
    with pytest.raises(ValueError, match="parameterization"):
        ImageParameterization("wavelet", 1, 8, generator, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["pixels", "fourier"])
def test_parameterization_lives_on_the_requested_device(kind):
    """Values and frequency scale move together (a CPU buffer next to CUDA values would fail on a GPU)."""
    param = ImageParameterization(kind, 2, 8, torch.Generator().manual_seed(0), torch.device("meta"))
    assert {t.device.type for t in [*param.parameters(), *param.buffers()]} == {"meta"}
    assert isinstance(param.values, torch.nn.Parameter) and param.values.requires_grad


@pytest.mark.parametrize(
    "field, value, message",
    [("fourier_decay", -0.5, "fourier_decay must be in"), ("fourier_decay", 4.0, "fourier_decay must be in"),
     ("scale_jitter", 1.0, "scale_jitter must be in"), ("color_shift", 1.0, "color_shift must be in"), ("color_shift", -0.1, "color_shift must be in"),
     ("reverse_attack", -0.5, "reverse_attack must be >= 0"), ("coarse_to_fine", 1.5, "coarse_to_fine must be in"), ("parameterization", "wavelet", "parameterization must be one of")],
)
def test_bad_view_and_parameterization_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        InversionConfig(**{field: value}).validate()
