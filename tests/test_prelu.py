"""Our PReLU (faster backward) against torch's own, which is the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from arcface.backbones.prelu import PReLU, prelu


@pytest.mark.parametrize("num_parameters", [1, 6])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torch_prelu_in_float64(num_parameters, channels_last):
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    x[0, 0, 0, :2] = 0.0  # the kink: torch takes the slope there
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    ours, theirs = PReLU(num_parameters).double(), nn.PReLU(num_parameters).double()
    with torch.no_grad():
        ours.weight.uniform_(-0.5, 0.5)
        theirs.weight.copy_(ours.weight)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-15)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([0.1, -0.3, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(prelu, (x, weight))


def test_bf16_under_autocast_is_close_to_float32():
    x = torch.randn(4, 8, 6, 6)
    module = PReLU(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.bfloat16().requires_grad_(True)
        out = module(xb)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    reference = nn.PReLU(8)
    xf = x.bfloat16().float().requires_grad_(True)
    reference(xf).sum().backward()
    torch.testing.assert_close(out.float(), reference(xf), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(module.weight.grad, reference.weight.grad, rtol=2e-2, atol=1e-1)
    assert module.weight.grad.dtype == torch.float32


def test_state_dict_is_nn_prelus():
    assert PReLU(5).state_dict().keys() == nn.PReLU(5).state_dict().keys()
