"""Our hand-written backward (folded center normalization) against finite differences, float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from arcface.heads import create_head, list_heads, scaled_cosine

B, C, D = 4, 5, 6


def _loss_fn(head, labels):
    def loss(x, weight):
        return functional_call(head, {"weight": weight}, (x, labels))

    return loss


@pytest.mark.parametrize("name", list_heads())
def test_head_gradient_is_exact(name):
    """Registry-wide: a new head is gradchecked the moment it is registered."""
    generator = torch.Generator().manual_seed(0)
    kwargs = {} if name == "softmax" else {"scale": 4.0}
    head = create_head(name, num_classes=C, embedding_size=D, **kwargs).double()
    x = torch.randn(B, D, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn_like(head.weight, requires_grad=True)
    labels = torch.randint(0, C, (B,), generator=generator)
    assert torch.autograd.gradcheck(_loss_fn(head, labels), (x, weight), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("pooling", ["max", "softmax"])
def test_subcenter_and_extra_terms_gradient(pooling):
    generator = torch.Generator().manual_seed(1)
    head = create_head(
        "combined", num_classes=C, embedding_size=D, scale=4.0, sub_centers=3, pooling=pooling,
        intra_weight=0.5, inter_weight=0.5, triplet_weight=0.5,
    ).double()
    x = torch.randn(B, D, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn_like(head.weight, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2])
    assert torch.autograd.gradcheck(_loss_fn(head, labels), (x, weight), eps=1e-6, atol=1e-7)


def test_scaled_cosine_both_outputs_gradcheck():
    generator = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(B, D, dtype=torch.float64, generator=generator), dim=1)
    x.requires_grad_(True)
    weight = torch.randn(C * 2, D, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.tensor([[0, 1], [4, 5], [2, 3], [8, 9]])

    def both(x, weight):
        logits, target = scaled_cosine(x, weight, 3.0, index)
        return logits, target

    assert torch.autograd.gradcheck(both, (x, weight), eps=1e-6, atol=1e-7)
    logits, target = both(x, weight)
    reference = 3.0 * x @ torch.nn.functional.normalize(weight, dim=1).t()
    torch.testing.assert_close(logits, reference)
    torch.testing.assert_close(target, reference.gather(1, index) / 3.0)
