"""The margin loss at scale: class chunks and a half-precision product, against float64 formulas.

- Chunked == unchunked in float64 (loss and both gradients), for chunk sizes that do and do not
  divide the number of classes, with sub-centers, sampling and straight-through gradients.
- bf16 and fp16 products (CPU autocast; a CPU without fp16 arithmetic runs the fp16 matmul in
  software, exactly enough to test the branch) against a float64 reference written from the
  formula, for embeddings and centers of norms 1 to 300 and targets on both sides of the pi
  boundary: relative error <= 1e-2.
- ``cosine_precision="float32"`` ignores autocast exactly; what each precision chooses.

Relative errors of tensors are norm-wise: ``||got - want|| / ||want||``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import reference
from arcface.heads import COMBINED_PRESETS, PartialFCHead, create_head
from arcface.heads.margin_loss import AUTO_HALF_PRODUCT, COSINE_PRECISIONS, DEFAULT_CLASS_CHUNK, product_dtype


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _formula_loss(x, weight, labels, scale, m1, m2, m3, pi_region="fallback"):
    """The combined-margin cross-entropy written from the paper's formula, float64, one class center
    per class: every cosine from normalized vectors, the target angle through arccos, the pi-region
    fallback ``cos(theta) - (1 + cos(theta_b)) - m3`` past ``theta_b = (pi - m2) / m1``."""
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).t()
    onehot = F.one_hot(labels, weight.shape[0]).bool()
    cos_y = cos[onehot].clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.arccos(cos_y)
    margined = torch.cos(m1 * theta + m2) - m3
    theta_b = (math.pi - m2) / m1
    if pi_region == "fallback" and theta_b < math.pi:
        margined = torch.where(theta <= theta_b, margined, cos_y - (1 + math.cos(theta_b)) - m3)
    logits = torch.where(onehot, scale * margined.unsqueeze(1).expand_as(cos), scale * cos)
    return (torch.logsumexp(logits, dim=1) - scale * margined).mean()


def _loss_and_grads(head, x, labels, weight=None):
    """Loss, d/dx and d/dweight of a head (optionally holding ``weight``)."""
    x = x.detach().clone().requires_grad_(True)
    params = {"weight": (head.weight if weight is None else weight).detach().clone().requires_grad_(True)}
    loss = functional_call(head, params, (x, labels))
    loss.backward()
    return loss.detach(), x.grad, params["weight"].grad


def _reference(x, weight, labels, name):
    x = x.double().detach().requires_grad_(True)
    w = weight.double().detach().requires_grad_(True)
    loss = _formula_loss(x, w, labels, 64.0, **COMBINED_PRESETS[name])
    loss.backward()
    return loss.detach(), x.grad, w.grad


# ------------------------------------------------------------------ the formula reference itself
@pytest.mark.parametrize("name", sorted(COMBINED_PRESETS))
def test_formula_reference_equals_the_literal_reference(name):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (6,), generator=generator)
    margins = COMBINED_PRESETS[name]
    literal = reference.margin_logits(x, weight, labels, 64.0, margins["m1"], margins["m2"], margins["m3"])
    expected = reference.cross_entropy(literal, labels.tolist())
    assert _formula_loss(x, weight, labels, 64.0, **margins).item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ chunks, float64
C, D, B = 11, 6, 8


def _float64_head(name="arcface", **kwargs):
    return create_head(name, num_classes=C, embedding_size=D, seed=4, **kwargs).double()


def _batch(seed=0, batch=B, classes=C, dim=D):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, classes, (batch,), generator=generator)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 10, 11, 64])
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("arcface", {}),
        ("combined", {"straight_through": True}),
        ("sphereface", {"pi_region": "none"}),
        ("subcenter_arcface", {}),
        ("subcenter_arcface", {"pooling": "softmax"}),
        ("cosface", {"intra_weight": 0.5, "inter_weight": 0.5}),
    ],
)
def test_chunked_equals_unchunked_in_float64(name, kwargs, chunk):
    x, labels = _batch()
    whole = _loss_and_grads(_float64_head(name, class_chunk=0, scale=8.0, **kwargs), x, labels)
    chunked = _loss_and_grads(_float64_head(name, class_chunk=chunk, scale=8.0, **kwargs), x, labels)
    for got, want in zip(chunked, whole):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [0, 3])
def test_chunked_loss_equals_the_literal_reference(chunk):
    x, labels = _batch(1)
    head = _float64_head("combined", class_chunk=chunk)
    literal = reference.margin_logits(x, head.weight.detach(), labels, head.scale, head.m1, head.m2, head.m3)
    assert head(x, labels).item() == pytest.approx(reference.cross_entropy(literal, labels.tolist()), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs", [{"class_chunk": 2}, {"class_chunk": 2, "sub_centers": 3, "pooling": "softmax"}, {"class_chunk": 3, "sub_centers": 2}]
)
def test_chunked_gradient_is_exact(kwargs):
    """gradcheck of the recomputing backward, with chunks that do not divide the 5 classes."""
    x, labels = _batch(2, batch=5, classes=5)
    head = create_head("combined", num_classes=5, embedding_size=D, scale=4.0, **kwargs).double()
    weight = torch.randn_like(head.weight, requires_grad=True)

    def loss(x, weight):
        return functional_call(head, {"weight": weight}, (x, labels))

    assert torch.autograd.gradcheck(loss, (x.requires_grad_(True), weight), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_sampled_partial_fc_chunks_equal_the_whole(chunk):
    x, labels = _batch(3, classes=20)
    results = []
    for class_chunk in (0, chunk):
        head = PartialFCHead(20, D, sample_rate=0.5, seed=2, class_chunk=class_chunk, m2=0.5).double()
        results.append(_loss_and_grads(head, x, labels))  # same seed: the same sampled classes
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert (results[1][2].abs().sum(dim=1) == 0).sum() >= 20 - 10  # unsampled rows: zero gradient


def test_a_chunked_loss_holds_no_batch_by_classes_matrix():
    """What autograd keeps for backward (beyond parameters and inputs): O(B + C), not B*C."""
    batch, classes, dim = 32, 4096, 64
    x = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
    sizes = {}
    for chunk in (0, 256):
        head = create_head("arcface", num_classes=classes, embedding_size=dim, class_chunk=chunk)
        excluded = {p.untyped_storage().data_ptr() for p in [x, *head.parameters()]}
        saved: dict[int, int] = {}

        def pack(tensor):
            if tensor.untyped_storage().data_ptr() not in excluded:
                saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            head(x, labels)
        sizes[chunk] = sum(saved.values())
    logits_bytes = batch * classes * 4
    assert sizes[0] >= logits_bytes  # one chunk: its logits are kept
    assert sizes[256] < logits_bytes // 8, sizes


# ------------------------------------------------------------------ half-precision products
def _realistic(seed, batch=48, classes=300, dim=128, near_boundary=0):
    """Embeddings and centers with norms log-uniform in [1, 300]; the first ``near_boundary`` samples
    at theta_b +- 2e-3 from their center (ArcFace: theta_b = pi - 0.5)."""
    generator = torch.Generator().manual_seed(seed)
    weight = F.normalize(torch.randn(classes, dim, generator=generator, dtype=torch.float64), dim=1)
    x = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    # Pull samples towards their centers so that the target angles spread over [0, pi].
    pull = torch.rand(batch, 1, generator=generator, dtype=torch.float64) * 3.0 - 1.0
    x = F.normalize(x + pull * weight[labels], dim=1)
    theta_b = math.pi - COMBINED_PRESETS["arcface"]["m2"]
    for i in range(near_boundary):
        center = weight[labels[i]]
        other = F.normalize(x[i] - (x[i] @ center) * center, dim=0)
        theta = theta_b + (2e-3 if i % 2 else -2e-3)
        x[i] = math.cos(theta) * center + math.sin(theta) * other
    def norms(n):
        return torch.exp(torch.rand(n, 1, generator=generator, dtype=torch.float64) * math.log(300.0))
    return (x * norms(batch)).float(), (weight * norms(classes)).float(), labels


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [0, 64])
@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_half_product_against_the_float64_formula(name, dtype, chunk):
    x, weight, labels = _realistic(5, near_boundary=8)
    head = create_head(name, num_classes=weight.shape[0], embedding_size=x.shape[1], cosine_precision="autocast", class_chunk=chunk)
    with torch.autocast("cpu", dtype=dtype):
        got = _loss_and_grads(head, x, labels, weight)
    want = _reference(x, weight, labels, name)
    assert torch.isfinite(got[0])
    for got_t, want_t in zip(got, want):
        assert _rel(got_t, want_t) <= 1e-2, (name, _rel(got_t, want_t))
    # The half product really ran: float32 is closer to the formula than this.
    exact = _loss_and_grads(create_head(name, num_classes=weight.shape[0], embedding_size=x.shape[1]), x, labels, weight)
    assert _rel(exact[1], want[1]) < _rel(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_product_at_the_pi_boundary_keeps_the_exact_margin(dtype):
    """Every target right at theta_b: their logits come from the float32 path, so the loss and the
    gradient match float64 as closely as in float32."""
    x, weight, labels = _realistic(6, batch=16, near_boundary=16)
    head = create_head("arcface", num_classes=weight.shape[0], embedding_size=x.shape[1], cosine_precision="autocast", class_chunk=50)
    with torch.autocast("cpu", dtype=dtype):
        got = _loss_and_grads(head, x, labels, weight)
    want = _reference(x, weight, labels, "arcface")
    for got_t, want_t in zip(got, want):
        assert _rel(got_t, want_t) <= 1e-2


def test_half_product_of_a_sharded_sampled_head():
    x, weight, labels = _realistic(7, classes=400)
    head = create_head("arcface", num_classes=400, embedding_size=x.shape[1], sample_rate=0.5, seed=1,
                       cosine_precision="autocast", class_chunk=64)
    assert isinstance(head, PartialFCHead)
    state = head.sampler_state()
    with torch.autocast("cpu", dtype=torch.float16):
        got = _loss_and_grads(head, x, labels, weight)
    head.load_sampler_state(state)
    index = head.sample_centers(labels)
    position = {int(c): i for i, c in enumerate(index)}
    sub_labels = torch.tensor([position[int(c)] for c in labels])
    want = _reference(x, weight[index], sub_labels, "arcface")
    assert _rel(got[0], want[0]) <= 1e-2 and _rel(got[1], want[1]) <= 1e-2
    assert _rel(got[2][index], want[2]) <= 1e-2


def test_fp16_gradient_keeps_the_many_small_probabilities():
    """A million classes near initialization: every probability ~1e-6, deep below fp16's normal
    range (6.1e-5), where rounding costs a few percent each. The backward casts them scaled by a
    power of 2 per chunk, so the gradient rows of the non-target classes (each a sum of 4 of them)
    stay within 1e-2 of float64 (unscaled: 2.7e-2)."""
    generator = torch.Generator().manual_seed(8)
    classes, dim = 1_000_000, 8
    x = torch.randn(4, dim, generator=generator)
    weight = torch.randn(classes, dim, generator=generator)
    labels = torch.randint(0, classes, (4,), generator=generator)
    head = create_head("arcface", num_classes=classes, embedding_size=dim, scale=1.0, cosine_precision="autocast", class_chunk=1 << 16)
    with torch.autocast("cpu", dtype=torch.float16):
        got = _loss_and_grads(head, x, labels, weight)
    del head
    x64, w64 = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    _formula_loss(x64, w64, labels, 1.0, **COMBINED_PRESETS["arcface"]).backward()
    others = torch.ones(classes, dtype=torch.bool)
    others[labels] = False
    assert _rel(got[2][others], w64.grad[others]) <= 1e-2
    assert _rel(got[1], x64.grad) <= 1e-2
    assert _rel(got[2], w64.grad) <= 1e-2


# ------------------------------------------------------------------ precision choice
def test_float32_precision_ignores_autocast_exactly():
    x, labels = _batch(4)
    head = create_head("arcface", num_classes=C, embedding_size=D, seed=1, cosine_precision="float32")
    plain = _loss_and_grads(head, x.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _loss_and_grads(head, x.float(), labels)
    for got, want in zip(under, plain):
        assert torch.equal(got, want)


def test_what_each_precision_chooses():
    f32, f64 = torch.float32, torch.float64
    assert all(product_dtype(p, "cpu", f32) == f32 for p in COSINE_PRECISIONS)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert product_dtype("float32", "cpu", f32) == f32
        assert product_dtype("autocast", "cpu", f32) == torch.bfloat16
        assert product_dtype("autocast", "cpu", f64) == f64
        assert product_dtype("auto", "cpu", f32) == (torch.bfloat16 if AUTO_HALF_PRODUCT["cpu"] else f32)
    assert AUTO_HALF_PRODUCT["cuda"] and set(DEFAULT_CLASS_CHUNK) >= {"cpu", "cuda"}


@pytest.mark.parametrize("kwargs,message", [
    ({"cosine_precision": "half"}, "cosine_precision must be one of"),
    ({"class_chunk": -1}, "class_chunk"),
    ({"class_chunk": 2.5}, "class_chunk"),
])
def test_bad_loss_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_head("arcface", num_classes=3, embedding_size=4, **kwargs)
    with pytest.raises(ValueError, match=message):
        PartialFCHead(3, 4, **kwargs)
