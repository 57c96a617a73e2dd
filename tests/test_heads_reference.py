"""Every margin head against the literal float64 reference of the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

import reference
from arcface.heads import COMBINED_PRESETS, create_head, margined_target

B, C, D = 6, 7, 5


def _inputs(seed: int, sub_centers: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=generator, dtype=torch.float64)
    weight = torch.randn(C * sub_centers, D, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=generator)
    return x, weight, labels


def _head(name: str, weight: torch.Tensor, **kwargs):
    head = create_head(name, num_classes=C, embedding_size=D, **kwargs).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _reference_logits(head, x, weight, labels):
    return torch.tensor(
        reference.margin_logits(
            x, weight, labels, head.scale, head.m1, head.m2, head.m3,
            head.sub_centers, head.pooling, head.pi_region,
        ),
        dtype=torch.float64,
    )


@pytest.mark.parametrize("name", sorted(COMBINED_PRESETS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preset_logits_and_loss_match_literal_formula(name, seed):
    x, weight, labels = _inputs(seed)
    head = _head(name, weight)
    expected = _reference_logits(head, x, weight, labels)
    torch.testing.assert_close(head.logits(x, labels), expected, rtol=1e-10, atol=1e-10)
    expected_loss = reference.cross_entropy(expected.tolist(), labels.tolist())
    assert head(x, labels).item() == pytest.approx(expected_loss, rel=1e-10)


def test_presets_have_the_papers_margins():
    head = create_head("arcface", num_classes=3, embedding_size=4)
    assert (head.scale, head.m1, head.m2, head.m3) == (64.0, 1.0, 0.5, 0.0)
    assert create_head("cosface", num_classes=3, embedding_size=4).m3 == 0.35
    combined = create_head("combined", num_classes=3, embedding_size=4)
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.3, 0.2)
    assert create_head("subcenter_arcface", num_classes=3, embedding_size=4).weight.shape == (9, 4)


@pytest.mark.parametrize(
    "margins", [(1.35, 0.0, 0.0), (4.0, 0.0, 0.0), (0.9, 0.4, 0.15), (1.2, 0.3, 0.2), (2.0, 0.5, 0.35)]
)
@pytest.mark.parametrize("pi_region", ["fallback", "easy_margin", "none"])
def test_all_three_margins_combine(margins, pi_region):
    """The general form applies m1, m2 and m3 together (insightface ignores m1, m2 when m3 > 0)."""
    m1, m2, m3 = margins
    x, weight, labels = _inputs(3)
    head = _head("combined", weight, m1=m1, m2=m2, m3=m3, pi_region=pi_region, scale=30.0)
    torch.testing.assert_close(head.logits(x, labels), _reference_logits(head, x, weight, labels), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pooling", ["max", "softmax"])
@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_subcenter_pooling_matches_reference(pooling, name):
    x, weight, labels = _inputs(4, sub_centers=3)
    head = _head(name, weight, sub_centers=3, pooling=pooling, scale=8.0)
    torch.testing.assert_close(head.logits(x, labels), _reference_logits(head, x, weight, labels), rtol=1e-10, atol=1e-10)


def test_subcenter_assignment_is_the_nearest_own_subcenter():
    x, weight, labels = _inputs(5, sub_centers=3)
    head = _head("subcenter_arcface", weight)
    index, cosines = head.assign_subcenters(x, labels)
    for i, y in enumerate(labels.tolist()):
        expected = [reference.cosine(x[i].tolist(), weight[y * 3 + k].tolist()) for k in range(3)]
        assert cosines[i].tolist() == pytest.approx(expected, rel=1e-12)
        assert index[i].item() == max(range(3), key=lambda k: expected[k])
    full = head.cosines(x)
    assert full.shape == (B, C, 3)
    torch.testing.assert_close(full[torch.arange(B), labels], cosines)


# ------------------------------------------------------------------ the pi region, hand-picked
ARC_M = 0.5
THETA_B = math.pi - ARC_M  # where theta + m reaches pi


@pytest.mark.parametrize("theta", [0.3, 1.5, THETA_B - 1e-3, THETA_B + 1e-3, 2.9, 3.1])
def test_pi_region_options_on_both_sides_of_the_boundary(theta):
    cos = torch.tensor([math.cos(theta)], dtype=torch.float64)
    none = margined_target(cos, 1.0, ARC_M, 0.0, "none").item()
    easy = margined_target(cos, 1.0, ARC_M, 0.0, "easy_margin").item()
    fallback = margined_target(cos, 1.0, ARC_M, 0.0, "fallback").item()
    assert none == pytest.approx(math.cos(theta + ARC_M), abs=1e-9)
    assert easy == pytest.approx(math.cos(theta + ARC_M) if theta < math.pi / 2 else math.cos(theta), abs=1e-9)
    if theta <= THETA_B:
        assert fallback == pytest.approx(math.cos(theta + ARC_M), abs=1e-9)
    else:
        assert fallback == pytest.approx(math.cos(theta) - (1 - math.cos(ARC_M)), abs=1e-9)
        assert fallback < -1.0  # past the boundary the penalty keeps growing ...
        assert none > -1.0  # ... while the unprotected form turns back up


@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.35, 0.0, 0.0), (4.0, 0.0, 0.0), (1.0, 0.3, 0.2), (0.9, 0.4, 0.15), (2.0, 0.5, 0.35)])
def test_fallback_is_continuous_and_strictly_decreasing(margins):
    theta = torch.linspace(1e-3, math.pi - 1e-3, 20001, dtype=torch.float64)
    target = margined_target(torch.cos(theta), *margins, pi_region="fallback")
    steps = target[1:] - target[:-1]
    assert bool((steps < 0).all()), "the fallback target logit must decrease with theta everywhere"
    assert steps.abs().max().item() < 1e-2, "no jump: the fallback is continuous at theta_b"


def test_unprotected_form_is_not_monotonic():
    """The property the fallback exists for: without it the target logit turns back up."""
    theta = torch.linspace(1e-3, math.pi - 1e-3, 2001, dtype=torch.float64)
    target = margined_target(torch.cos(theta), 1.0, ARC_M, 0.0, pi_region="none")
    assert bool(((target[1:] - target[:-1]) > 0).any())


# ------------------------------------------------------------------ straight-through gradient
def _straight_through_reference(x, weight, labels, scale, margins):
    """insightface's arithmetic: margin added under no_grad, gradient of the plain scaled cosine."""
    m1, m2, m3 = margins
    x_unit = x / x.norm(dim=1, keepdim=True)
    w_unit = weight / weight.norm(dim=1, keepdim=True)
    cos = x_unit @ w_unit.t()
    delta = torch.zeros_like(cos)
    for i, y in enumerate(labels.tolist()):
        c = cos[i, y].item()
        delta[i, y] = reference.target_cosine(math.acos(c), m1, m2, m3, "none") - c
    logits = scale * (cos + delta)
    return torch.nn.functional.cross_entropy(logits, labels), logits


@pytest.mark.parametrize("name", ["arcface", "combined", "sphereface"])
def test_straight_through_matches_its_literal_reference(name):
    x, weight, labels = _inputs(6)
    x.requires_grad_(True)
    head = _head(name, weight, straight_through=True, pi_region="none")
    loss = head(x, labels)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = weight.clone().requires_grad_(True)
    ref_loss, ref_logits = _straight_through_reference(x_ref, w_ref, labels, head.scale, (head.m1, head.m2, head.m3))
    ref_loss.backward()
    torch.testing.assert_close(head.logits(x, labels), ref_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(head.weight.grad, w_ref.grad)


def test_straight_through_gradient_differs_from_exact():
    x, weight, labels = _inputs(7)
    grads = []
    for straight_through in (False, True):
        xx = x.clone().requires_grad_(True)
        _head("arcface", weight, straight_through=straight_through)(xx, labels).backward()
        grads.append(xx.grad)
    assert not torch.allclose(grads[0], grads[1])


# ------------------------------------------------------------------ intra / inter / triplet
def test_intra_inter_triplet_terms_match_reference():
    x, weight, labels = _inputs(8)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # positives and negatives for the triplet term
    base = _head("arcface", weight)
    ce = base(x, labels).item()
    weights = {"intra_weight": 0.7, "inter_weight": 0.3, "triplet_weight": 0.5}
    loss = _head("arcface", weight, triplet_margin=0.35, **weights)(x, labels).item()
    expected = (
        ce
        + 0.7 * reference.intra(x, weight, labels)
        - 0.3 * reference.inter(weight, labels)
        + 0.5 * reference.batch_hard_triplet(x, labels, 0.35)
    )
    assert loss == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("term", ["intra_weight", "inter_weight", "triplet_weight"])
def test_each_extra_term_alone(term):
    x, weight, labels = _inputs(9)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ce = _head("normface", weight)(x, labels).item()
    loss = _head("normface", weight, **{term: 1.0})(x, labels).item()
    extra = {
        "intra_weight": reference.intra(x, weight, labels),
        "inter_weight": -reference.inter(weight, labels),
        "triplet_weight": reference.batch_hard_triplet(x, labels, 0.35),
    }[term]
    assert loss == pytest.approx(ce + extra, rel=1e-9)


def test_triplet_term_is_zero_without_positives():
    x, weight, _ = _inputs(10)
    labels = torch.arange(B)
    ce = _head("arcface", weight)(x, labels)
    torch.testing.assert_close(_head("arcface", weight, triplet_weight=1.0)(x, labels), ce)


def test_softmax_head_is_plain_linear_cross_entropy():
    x, weight, labels = _inputs(11)
    head = create_head("softmax", num_classes=C, embedding_size=D).double()
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(torch.linspace(-1, 1, C))
    expected = [[sum(a * b for a, b in zip(xi, wj)) + bj for wj, bj in zip(weight.tolist(), head.bias.tolist())] for xi in x.tolist()]
    torch.testing.assert_close(head.logits(x, labels), torch.tensor(expected, dtype=torch.float64))
    assert head(x, labels).item() == pytest.approx(reference.cross_entropy(expected, labels.tolist()), rel=1e-10)
