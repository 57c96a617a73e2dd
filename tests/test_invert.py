"""Inversion: the BN prior against a literal reference, the losses falling, seeds, outputs, bad input."""

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from arcface.backbones import create_backbone
from arcface.cli import main
from arcface.data.errors import DataError
from arcface.invert import BNStatistics, InversionConfig, invert_classes, invert_embeddings, load_for_inversion
from arcface.train.config import TrainConfig, config_to_dict
from arcface.train.head_state import build_training_head


class Tiny(nn.Module):
    """(B, 3, 112, 112) -> (B, 8) with two BatchNorm2d layers holding non-trivial running statistics."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, stride=4), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, stride=4), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 7 * 7, 8)  # flattened, so the embedding's direction follows the image
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.tanh(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


def reference_bn_loss(model: Tiny, images: torch.Tensor) -> float:
    """Literal: per layer, per channel mean and std of the layer's input, then the two L2 norms."""
    inputs = []
    first = model.conv1(images)
    inputs.append((first, model.bn1))
    inputs.append((model.conv2(torch.relu(model.bn1(first))), model.bn2))  # the same path as forward
    total = 0.0
    for features, bn in inputs:
        f = features.detach().double()
        mean_gap, std_gap = 0.0, 0.0
        for c in range(f.shape[1]):
            values = f[:, c].flatten()
            mean = values.sum() / values.numel()
            std = torch.sqrt(((values - mean) ** 2).sum() / values.numel() + bn.eps)
            mean_gap += float(mean - bn.running_mean[c].double()) ** 2
            std_gap += float(std - torch.sqrt(bn.running_var[c].double() + bn.eps)) ** 2
        total += mean_gap ** 0.5 + std_gap ** 0.5
    return total


@pytest.fixture(params=["matmul", "var_mean"])
def moments_method(request, monkeypatch):
    """Both formulas of channel_moments in the BN prior, on CPU tensors: the matrix products (the CPU's)
    and torch.var_mean (other devices')."""
    import functools

    import arcface.invert.bn_prior as bn_prior
    from arcface.invert.channel_moments import channel_moments

    monkeypatch.setattr(bn_prior, "channel_moments", functools.partial(channel_moments, method=request.param))
    return request.param


# float32 features against the float64 reference: both formulas agree to about 4e-8 (relative). A
# variance divided by N - 1 instead of N (N = 3,920 values per channel here) is off by 1e-4.
BN_REFERENCE_REL = 1e-6


def test_bn_prior_matches_the_literal_reference(moments_method):
    model = Tiny().eval()
    images = torch.rand(5, 3, 112, 112) * 2 - 1
    with BNStatistics(model) as prior:
        model(images)
        ours = prior.loss().detach()
    assert float(ours) == pytest.approx(reference_bn_loss(model, images), rel=BN_REFERENCE_REL)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BNStatistics(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_bn_prior_for_logging_only_has_the_same_value_and_no_gradient(monkeypatch, moments_method):
    model = Tiny().eval()
    images = (torch.rand(4, 3, 112, 112) * 2 - 1).requires_grad_(True)
    with BNStatistics(model, track_gradient=False) as prior:
        model(images)
        logged = prior.loss()
    assert not logged.requires_grad
    assert float(logged) == pytest.approx(reference_bn_loss(model, images.detach()), rel=BN_REFERENCE_REL)
    # lambda_bn = 0 skips the prior's backward: the images and the logged L_bn are those of a run whose
    # prior keeps its gradient (there multiplied by 0), bit for bit
    config = InversionConfig(steps=6, lambda_bn=0.0, seed=2)
    target = torch.randn(2, 8)
    skipped, skipped_history = invert_embeddings(model, target, config)
    tracking = BNStatistics.__init__
    monkeypatch.setattr(BNStatistics, "__init__", lambda self, m, eps=None, track_gradient=True: tracking(self, m, eps, True))
    kept, kept_history = invert_embeddings(model, target, config)
    assert torch.equal(skipped, kept)
    assert skipped_history == kept_history


def test_bn_prior_on_bf16_features_matches_the_float64_reference_and_gradient():
    # BatchNorm first, so the layer's input is exactly the (bf16-rounded) images
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
    bn.running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
    model = nn.Sequential(bn)
    images = (torch.rand(4, 3, 112, 112) * 2 - 1).bfloat16().float().requires_grad_(True)
    exact = images.detach().double()
    mean, std = exact.mean(dim=(0, 2, 3)), torch.sqrt(exact.var(dim=(0, 2, 3), unbiased=False) + bn.eps)
    expected = float((mean - bn.running_mean.double()).norm() + (std - torch.sqrt(bn.running_var.double() + bn.eps)).norm())
    gradients = {}
    for dtype in (torch.float32, torch.bfloat16):
        with BNStatistics(model) as prior:
            model(images.to(dtype))
            loss = prior.loss()
        assert loss.dtype == torch.float32
        assert float(loss.detach()) == pytest.approx(expected, rel=5e-3), dtype  # bf16: the C-sized results are rounded
        (gradients[dtype],) = torch.autograd.grad(loss, images)
    cosine = F.cosine_similarity(gradients[torch.float32].flatten(), gradients[torch.bfloat16].flatten(), dim=0)
    assert float(cosine) > 0.99


def test_open_set_losses_fall_and_seeds_repeat():
    model = Tiny()
    target = torch.randn(2, 8)
    # plain descent on the natural-image spectrum (decay 1): both losses must fall well within 40 steps
    config = InversionConfig(steps=40, lr=0.1, seed=3, jitter=0, flip=False, fourier_decay=1.0)
    images, history = invert_embeddings(model, target, config, starts=2)
    assert images.shape == (2, 2, 3, 112, 112) and images.min() >= -1 and images.max() <= 1
    assert np.mean(history["task"][-5:]) < 0.1 * np.mean(history["task"][:5])
    assert np.mean(history["bn"][-5:]) < 0.9 * np.mean(history["bn"][:5])
    again, _ = invert_embeddings(model, target, config, starts=2)
    assert torch.equal(images, again)
    jittered = InversionConfig(steps=40, lr=0.1, seed=4)  # with shifts, mirrors and decay 1.5 (the defaults) too
    other, history = invert_embeddings(model, target, jittered, starts=2)
    assert np.mean(history["task"][-5:]) < np.mean(history["task"][:5])
    assert np.mean(history["bn"][-5:]) < np.mean(history["bn"][:5])
    assert not torch.equal(images, other)
    assert all(p.requires_grad for p in model.parameters()) and model.training  # restored


def test_close_set_drives_the_class_score_up():
    model = Tiny()
    head = build_training_head(TrainConfig().head, 5, 8, 0, 1, seed=0)
    images, history = invert_classes(model, head, [1, 3], InversionConfig(steps=40, lr=0.1, jitter=0, flip=False), starts=1)
    assert images.shape == (2, 1, 3, 112, 112)
    assert history["task"][-1] < history["task"][0]
    with pytest.raises(ValueError, match="outside"):
        invert_classes(model, head, [7], InversionConfig(steps=1))


def checkpoint(path, with_head=True):
    config = TrainConfig()
    config.model.backbone, config.model.embedding_size = "mobilefacenet", 16
    torch.manual_seed(0)
    backbone = create_backbone("mobilefacenet", embedding_size=16)
    state = {"config": config_to_dict(config), "step": 1, "num_classes": 4 if with_head else 0, "backbone": backbone.state_dict(),
             "head": {"weight": torch.randn(4, 16)} if with_head else {}}
    torch.save(state, path)
    return path


def test_command_writes_grids_and_images(tmp_path):
    ckpt = checkpoint(tmp_path / "c.pt")
    out = tmp_path / "inv"
    assert main(["invert", str(ckpt), "--classes", "0,2", "--steps", "2", "--starts", "2", "--batch", "4", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    grid = cv2.imread(str(out / "grid_class0.png"))
    assert grid.shape == (112, 2 * 112 + 2, 3)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["class0_0.png", "class0_1.png", "class2_0.png", "class2_1.png"]
    assert json.loads((out / "targets.json").read_text())["targets"] == ["class0", "class2"]
    np.save(tmp_path / "e.npy", np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32))
    assert main(["invert", str(ckpt), "--embeddings", str(tmp_path / "e.npy"), "--steps", "2", "--starts", "1",
                 "--out", str(tmp_path / "inv2"), "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "inv2" / "grid_embedding0.png").is_file()


def test_bad_input_is_refused(tmp_path, caplog):
    no_head = checkpoint(tmp_path / "nohead.pt", with_head=False)
    with pytest.raises(DataError, match="head"):
        load_for_inversion(no_head, need_head=True)
    assert main(["invert", str(no_head), "--classes", "0", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["invert", str(checkpoint(tmp_path / "c.pt")), "--classes", "0,x", "--out", str(tmp_path / "x")]) == 2
    assert "--classes expects" in caplog.text
    with pytest.raises(SystemExit):
        main(["invert", "--help"])
    assert main(["invert", str(checkpoint(tmp_path / "c.pt")), "--classes", "0", "--scale-jitter", "1.5", "--out", str(tmp_path / "y")]) == 2
    assert "--scale-jitter must be in [0, 1)" in caplog.text and not (tmp_path / "y").exists()
    assert main(["invert", str(checkpoint(tmp_path / "c.pt")), "--classes", "0", "--color-shift", "1", "--out", str(tmp_path / "z")]) == 2
    assert "--color-shift must be in [0, 1)" in caplog.text and not (tmp_path / "z").exists()
    assert main(["invert", str(checkpoint(tmp_path / "c.pt")), "--classes", "0", "--reverse-attack", "-2", "--out", str(tmp_path / "r")]) == 2
    assert "--reverse-attack must be >= 0" in caplog.text and not (tmp_path / "r").exists()
    assert main(["invert", str(checkpoint(tmp_path / "c.pt")), "--classes", "0", "--coarse-to-fine", "2", "--out", str(tmp_path / "f")]) == 2
    assert "--coarse-to-fine must be in [0, 1]" in caplog.text and not (tmp_path / "f").exists()
    assert main(["invert", str(checkpoint(tmp_path / "c.pt")), "--classes", "0", "--layer-erosion", "1", "--out", str(tmp_path / "e")]) == 2
    assert "--layer-erosion must be in [0, 1)" in caplog.text and not (tmp_path / "e").exists()


def test_command_defaults_are_the_configs():
    """The command line spells out InversionConfig's defaults (so --help needs no torch); they must agree."""
    from arcface.cli import build_parser

    args = build_parser().parse_args(["invert", "ckpt.pt", "--classes", "0", "--out", "x"])
    defaults = InversionConfig()
    for field in ("steps", "lambda_bn", "lr", "jitter", "scale_jitter", "rotate_deg", "color_shift", "reverse_attack", "parameterization", "fourier_decay", "coarse_to_fine", "layer_erosion",
                  "embedding_weight",
                  "seed"):
        assert getattr(args, field) == getattr(defaults, field), field
    assert args.no_flip == (not defaults.flip)


def test_fourier_inversion_falls_and_repeats():
    model = Tiny()
    target = torch.randn(2, 8)
    config = InversionConfig(steps=40, lr=0.05, seed=3, parameterization="fourier", jitter=2, scale_jitter=0.05, rotate_deg=5)
    images, history = invert_embeddings(model, target, config, starts=2)
    assert images.shape == (2, 2, 3, 112, 112) and images.min() >= -1 and images.max() <= 1
    assert np.mean(history["task"][-5:]) < 0.5 * np.mean(history["task"][:5])
    assert torch.equal(images, invert_embeddings(model, target, config, starts=2)[0])


def test_reverse_perturbation_is_a_bounded_step_up_the_loss():
    from arcface.invert.inversion import _reverse_perturbation

    model = Tiny().eval()
    target = F.normalize(torch.randn(4, 8), dim=1)

    def task(embeddings):
        return (F.normalize(embeddings, dim=1) - target).pow(2).sum(1).mean()

    views = torch.rand(4, 3, 112, 112) * 2 - 1
    delta = _reverse_perturbation(model, task, views, 0.5, torch.Generator().manual_seed(0))
    lengths = delta.flatten(1).norm(dim=1)
    assert delta.shape == views.shape and not delta.requires_grad
    assert (lengths <= 0.5 + 1e-6).all() and (lengths > 0).all()
    # the reference: each image's gradient direction, by autograd of the same loss
    probe = views.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(task(model(probe)), probe)
    expected = gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * lengths.view(-1, 1, 1, 1)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert task(model(views + delta)) > task(model(views))


@pytest.mark.parametrize("option", [{"reverse_attack": 0.5}, {"coarse_to_fine": 0.5}, {"layer_erosion": 0.3}])
def test_inversion_options_fall_repeat_and_change_the_images(option):
    model = Tiny()
    target = torch.randn(2, 8)
    base = {"steps": 40, "lr": 0.1, "seed": 3, "fourier_decay": 1.0}
    config = InversionConfig(**base, **option)
    images, history = invert_embeddings(model, target, config, starts=2)
    assert np.mean(history["task"][-5:]) < 0.5 * np.mean(history["task"][:5])
    assert torch.equal(images, invert_embeddings(model, target, config, starts=2)[0])
    assert not torch.equal(images, invert_embeddings(model, target, InversionConfig(**base), starts=2)[0])
