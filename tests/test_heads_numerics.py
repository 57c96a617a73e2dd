"""Registry-wide properties: shapes, finiteness at the edges, low precision, clear errors, memory."""

from __future__ import annotations

import pytest
import torch

from arcface.heads import create_head, list_heads

B, C, D = 8, 11, 16
HEADS = list_heads()
NORMALIZED = [name for name in HEADS if name != "softmax"]


def _head(name, **kwargs):
    torch.manual_seed(0)
    return create_head(name, num_classes=C, embedding_size=D, **kwargs)


def _batch(seed=0, batch=B):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, D, generator=generator), torch.randint(0, C, (batch,), generator=generator)


def _assert_finite_step(head, x, labels):
    x = x.clone().requires_grad_(True)
    loss = head(x, labels)
    loss.backward()
    assert torch.isfinite(loss), f"loss {loss}"
    assert torch.isfinite(x.grad).all()
    for param in head.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()
    return loss


@pytest.mark.parametrize("name", HEADS)
def test_shapes_and_weight_layout(name):
    head = _head(name)
    x, labels = _batch()
    logits = head.logits(x, labels)
    assert logits.shape == (B, C) and logits.dtype == torch.float32
    assert head.weight.shape == (C * head.sub_centers, D)
    assert head(x, labels).shape == ()


@pytest.mark.parametrize("name", HEADS)
def test_training_reduces_the_loss(name):
    """A property any head must have: a few SGD steps on a fixed batch lower its loss."""
    head = _head(name)
    x, labels = _batch(1)
    x.requires_grad_(True)
    optimizer = torch.optim.SGD([x, *head.parameters()], lr=0.05)
    first = head(x, labels).item()
    for _ in range(20):
        optimizer.zero_grad()
        head(x, labels).backward()
        optimizer.step()
    assert head(x, labels).item() < first


@pytest.mark.parametrize("name", NORMALIZED)
def test_embedding_equal_to_its_center_is_finite(name):
    head = _head(name)
    _, labels = _batch()
    x = head.weight.detach()[labels * head.sub_centers].clone()
    _assert_finite_step(head, x, labels)


@pytest.mark.parametrize("name", NORMALIZED)
def test_embedding_opposite_to_its_center_is_finite(name):
    head = _head(name)
    _, labels = _batch()
    x = -head.weight.detach()[labels * head.sub_centers].clone()
    _assert_finite_step(head, x, labels)


@pytest.mark.parametrize("name", HEADS)
def test_zero_norm_embedding_is_finite(name):
    head = _head(name)
    x, labels = _batch()
    x[0] = 0.0
    _assert_finite_step(head, x, labels)
    if name in NORMALIZED:
        # Documented behaviour: a zero embedding is at 90 degrees from every center.
        row = head.logits(x, labels)[0]
        others = torch.ones(C, dtype=torch.bool)
        others[labels[0]] = False
        torch.testing.assert_close(row[others], torch.zeros(C - 1))


@pytest.mark.parametrize("name", HEADS)
def test_empty_batch_gives_zero_loss_and_zero_grad(name):
    head = _head(name)
    x = torch.zeros(0, D, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    assert head.logits(x, labels).shape == (0, C)
    loss = head(x, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(head.weight.grad) == 0


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeddings_give_finite_close_loss(name, dtype):
    head = _head(name)
    x, labels = _batch(2)
    reference = head(x.to(dtype).float(), labels)
    loss = _assert_finite_step(head, x.to(dtype), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_cosines_stay_float32_under_bf16_autocast(name):
    head = _head(name)
    x, labels = _batch(3)
    expected = head(x, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.logits(x, labels)
        loss = head(x, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("bad", [-1, C, C + 5])
def test_out_of_range_label_is_named(name, bad):
    head = _head(name)
    x, labels = _batch()
    labels[3] = bad
    with pytest.raises(ValueError, match=rf"label {bad} at batch position 3 is out of range"):
        head(x, labels)


@pytest.mark.parametrize("name", HEADS)
def test_bad_shapes_and_dtypes_are_clear_errors(name):
    head = _head(name)
    x, labels = _batch()
    with pytest.raises(ValueError, match=rf"shape \(batch, {D}\)"):
        head(torch.randn(B, D + 1), labels)
    with pytest.raises(ValueError, match="integer tensor"):
        head(x, labels.float())
    with pytest.raises(ValueError, match=rf"shape \({B},\)"):
        head(x, labels[:-1])


def test_bad_configuration_values_are_clear_errors():
    with pytest.raises(ValueError, match="unknown head 'arcfce'"):
        create_head("arcfce", num_classes=3)
    with pytest.raises(ValueError, match="m1"):
        create_head("combined", num_classes=3, m1=0.0)
    with pytest.raises(ValueError, match="m2"):
        create_head("arcface", num_classes=3, m2=-0.1)
    with pytest.raises(ValueError, match="pi_region"):
        create_head("arcface", num_classes=3, pi_region="clip")
    with pytest.raises(ValueError, match="pooling"):
        create_head("subcenter_arcface", num_classes=3, pooling="mean")
    with pytest.raises(ValueError, match="sub_centers"):
        create_head("arcface", num_classes=3, sub_centers=0)
    with pytest.raises(ValueError, match="no margin"):
        create_head("softmax", num_classes=3, m2=0.5)


def _saved_activation_bytes(loss_fn, parameters) -> int:
    """Bytes autograd keeps for backward, excluding parameters and inputs (shared storages)."""
    excluded = {p.untyped_storage().data_ptr() for p in parameters}
    saved: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in excluded:
            saved[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn()
    return sum(saved.values())


def test_arcface_saves_about_what_plain_softmax_saves():
    """Memory property behind the benchmark: no (C, D) copy, no extra (B, C) tensor kept."""
    batch, classes, dim = 32, 4096, 64
    x = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
    arcface = create_head("arcface", num_classes=classes, embedding_size=dim)
    linear = torch.nn.Linear(dim, classes)
    ours = _saved_activation_bytes(lambda: arcface(x, labels), [x, *arcface.parameters()])
    plain = _saved_activation_bytes(
        lambda: torch.nn.functional.cross_entropy(linear(x), labels), [x, *linear.parameters()]
    )
    logits_bytes = batch * classes * 4
    assert plain >= logits_bytes  # plain softmax keeps its log-probabilities
    assert ours <= plain + logits_bytes // 4, f"arcface keeps {ours} bytes for backward, softmax {plain}"
