"""PartialFCHead against the single-process MarginHead: in one process, and sharded over 2 gloo ranks.

The 2-process tests share one spawn (a module fixture): each rank runs every scenario, saves what it
saw, and the assertions run here against a MarginHead on the whole global batch.
"""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.func import functional_call

from arcface.heads import COMBINED_PRESETS, MarginHead, PartialFCHead, create_head, shard_range
from arcface.heads.init import seeded_normal_rows
from arcface.train.config import HeadConfig
from arcface.train.head_state import build_training_head

C, D, B = 10, 8, 6
SEED = 3

# name -> extra arguments on top of the preset's margins (both heads get them).
SETTINGS = {
    "arcface": {},
    "cosface": {},
    "combined": {},
    "sphereface": {},
    "arcface_straight_through": {"straight_through": True},
    "arcface_pi_none": {"pi_region": "none"},
}


def _preset(setting: str) -> tuple[str, dict]:
    name = setting.split("_")[0]
    return name, {**COMBINED_PRESETS[name], **SETTINGS.get(setting, {})}


def _batch(dtype=torch.float64, seed=0, batch=B, num_classes=C):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, generator=generator).to(dtype)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return x, labels


def _reference(weight, x, labels, setting="arcface", scale=64.0):
    """Loss, embedding gradient and weight gradient of a MarginHead holding ``weight``."""
    name, kwargs = _preset(setting)
    head = create_head(name, num_classes=weight.shape[0], embedding_size=D, scale=scale, **kwargs)
    head = head.to(weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    x = x.clone().requires_grad_(True)
    loss = head(x, labels)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


def _run(head, x, labels):
    x = x.clone().requires_grad_(True)
    head.zero_grad()
    loss = head(x, labels)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad.clone()


def _partial(setting="arcface", num_classes=C, dtype=torch.float64, **kwargs):
    _, margins = _preset(setting)
    return PartialFCHead(num_classes, D, seed=SEED, **margins, **kwargs).to(dtype)


# ------------------------------------------------------------------------------ one process
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_single_process_equals_margin_head(setting, dtype):
    head = _partial(setting, dtype=dtype)
    x, labels = _batch(dtype)
    loss, grad_x, grad_w = _run(head, x, labels)
    ref_loss, ref_x, ref_w = _reference(head.weight.detach(), x, labels, setting)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert loss.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(grad_x, ref_x, **tol)
    torch.testing.assert_close(grad_w, ref_w, **tol)


@pytest.mark.parametrize("name", sorted(COMBINED_PRESETS))
def test_every_preset_partial_fc_equals_margin_head_with_the_same_weights(name):
    """The registry's preset and a one-process PartialFCHead with its margins: same centers from
    the same seed, same loss and gradients (float64)."""
    margin = create_head(name, num_classes=C, embedding_size=D, seed=SEED).double()
    partial = PartialFCHead(C, D, seed=SEED, **COMBINED_PRESETS[name]).double()
    assert isinstance(margin, MarginHead)
    assert torch.equal(margin.weight, partial.weight)
    x, labels = _batch(seed=5)
    for got, want in zip(_run(partial, x, labels), _run(margin, x, labels)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_both_heads_share_their_defaults():
    keys = ("scale", "m1", "m2", "m3", "pi_region", "straight_through", "cosine_precision", "class_chunk")
    margin, partial = MarginHead(C, D).hparams(), PartialFCHead(C, D).hparams()
    assert {k: margin[k] for k in keys} == {k: partial[k] for k in keys}
    assert margin["scale"] == 64.0 and (margin["m1"], margin["m2"], margin["m3"]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("name", sorted(COMBINED_PRESETS))
def test_registry_builds_partial_fc_for_sampling_or_several_ranks(name):
    sampled = create_head(name, num_classes=C, embedding_size=D, sample_rate=0.5, seed=SEED)
    assert isinstance(sampled, PartialFCHead) and sampled.sample_rate == 0.5
    assert {k: getattr(sampled, k) for k in ("m1", "m2", "m3")} == COMBINED_PRESETS[name]
    assert sampled.scale == 64.0
    shard = create_head(name, num_classes=C, embedding_size=D, world_size=2, rank=1, seed=SEED)
    assert isinstance(shard, PartialFCHead) and (shard.class_start, shard.class_end) == (5, 10)
    assert torch.equal(shard.weight, create_head(name, num_classes=C, embedding_size=D, seed=SEED).weight[5:])


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("subcenter_arcface", {"sample_rate": 0.5}, "sub_centers=3"),
        ("arcface", {"world_size": 2, "intra_weight": 1.0}, "intra_weight"),
        ("arcface", {"sample_rate": 0.5, "pooling": "softmax"}, "pooling"),
        ("softmax", {"world_size": 2}, "no model-parallel version"),
        ("arcface", {"process_group": object()}, "process_group"),
    ],
)
def test_registry_refuses_what_partial_fc_cannot_do(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_head(name, num_classes=C, embedding_size=D, **kwargs)


@pytest.mark.parametrize("name,sample_rate", [("arcface", 1.0), ("subcenter_arcface", 1.0), ("softmax", 1.0), ("cosface", 0.5)])
def test_training_heads_come_from_the_registry_with_seeded_centers(name, sample_rate):
    config = HeadConfig(name=name, sample_rate=sample_rate, cosine_precision="float32", options={"class_chunk": 4} if name != "softmax" else {})
    head = build_training_head(config, C, D, rank=0, world_size=1, seed=SEED)
    rows = C * getattr(head, "sub_centers", 1)
    assert torch.equal(head.weight.detach(), seeded_normal_rows(SEED, 0, rows, D))
    assert isinstance(head, PartialFCHead) == (sample_rate < 1.0)
    if name != "softmax":
        assert (head.cosine_precision, head.class_chunk) == ("float32", 4)


def test_training_head_options_are_checked():
    with pytest.raises(ValueError, match="cosine_precision"):
        build_training_head(HeadConfig(cosine_precision="half"), C, D, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match="no model-parallel version"):
        build_training_head(HeadConfig(name="softmax", sample_rate=0.5), C, D, rank=0, world_size=1, seed=0)


def test_a_sampler_state_from_another_device_type_is_not_replayed(caplog):
    head = _partial(num_classes=40, sample_rate=0.5)
    state = head.sampler_state()
    index = head.sample_centers(torch.tensor([1, 2]))
    assert index.device == head.weight.device
    with caplog.at_level("WARNING"):
        head.load_sampler_state(torch.zeros(16, dtype=torch.uint8))  # a CUDA generator's state size
    assert "another device type" in caplog.text
    head.load_sampler_state(state)
    assert torch.equal(head.sample_centers(torch.tensor([1, 2])), index)


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_gradient_is_exact(sample_rate):
    """gradcheck of the hand-written cross-entropy backward (and the sampled path), float64."""
    head = _partial("combined", scale=4.0, sample_rate=sample_rate)
    x, labels = _batch()
    state = head.sampler_state()

    def loss(x, weight):
        head.load_sampler_state(state)  # the same centers on every evaluation
        return functional_call(head, {"weight": weight}, (x, labels))

    weight = torch.randn_like(head.weight, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (x.requires_grad_(True), weight), eps=1e-6, atol=1e-7)


def test_sample_rate_one_is_the_full_path(monkeypatch):
    """sample_rate=1.0 never reaches the sampler: no draw, all centers, the full head's result."""
    head = _partial(sample_rate=1.0)

    def no_sampling(labels):
        raise AssertionError("sample_centers was called with sample_rate=1.0")

    monkeypatch.setattr(head, "sample_centers", no_sampling)
    state = head.sampler_state()
    x, labels = _batch()
    loss, grad_x, grad_w = _run(head, x, labels)
    assert torch.equal(head.sampler_state(), state)
    ref_loss, ref_x, ref_w = _reference(head.weight.detach(), x, labels)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad_x, ref_x)
    torch.testing.assert_close(grad_w, ref_w)


def test_sampling_keeps_positives_and_equals_the_head_on_sampled_classes():
    num_classes = 20
    head = _partial(num_classes=num_classes, sample_rate=0.5)
    x, labels = _batch(num_classes=num_classes)
    state = head.sampler_state()
    loss, grad_x, grad_w = _run(head, x, labels)
    after = head.sampler_state()
    head.load_sampler_state(state)
    index = head.sample_centers(labels)  # the draw forward made
    assert torch.equal(head.sampler_state(), after)

    assert set(labels.tolist()) <= set(index.tolist())
    assert index.numel() == max(labels.unique().numel(), num_classes // 2)
    assert torch.equal(index, index.unique())  # sorted, no repeats
    assert torch.isfinite(loss)
    unsampled = torch.ones(num_classes, dtype=torch.bool)
    unsampled[index] = False
    assert unsampled.any() and (grad_w[unsampled] == 0).all()
    assert (grad_w[index].abs().sum(dim=1) > 0).all()

    # The softmax runs over the sampled classes only: a MarginHead holding just those.
    position = {int(c): i for i, c in enumerate(index)}
    sub_labels = torch.tensor([position[int(c)] for c in labels])
    ref_loss, ref_x, ref_w = _reference(head.weight.detach()[index], x, sub_labels)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad_x, ref_x)
    torch.testing.assert_close(grad_w[index], ref_w)


def test_sampling_is_reproducible_from_the_generator_state():
    head = _partial(num_classes=40, sample_rate=0.5)
    x, labels = _batch(num_classes=40, batch=4)
    state = head.sampler_state()
    first = _run(head, x, labels)
    second = _run(head, x, labels)  # a new draw
    head.load_sampler_state(state)
    replay = _run(head, x, labels)
    for a, b in zip(first, replay):
        assert torch.equal(a, b)
    assert not torch.equal(first[2] != 0, second[2] != 0)  # a different set of sampled rows
    # A fresh head with the same seed and rank starts from the same state.
    assert torch.equal(_partial(num_classes=40, sample_rate=0.5).sampler_state(), state)


def test_sample_count_when_positives_exceed_the_rate():
    head = _partial(num_classes=C, sample_rate=0.2)  # int(0.2 * 10) = 2 < 6 positives
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert head.sample_centers(labels).tolist() == [0, 1, 2, 3, 4, 5]
    assert head.sample_centers(torch.tensor([], dtype=torch.long)).numel() == 2


def test_cosines_are_float32_under_autocast():
    head = _partial(dtype=torch.float32)
    x, labels = _batch(torch.float32)
    expected = head(x.bfloat16(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(x.bfloat16(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_no_nan_at_a_center_or_for_a_zero_embedding(sample_rate):
    head = _partial(dtype=torch.float32, sample_rate=sample_rate)
    x, labels = _batch(torch.float32)
    x[0] = head.weight.detach()[labels[0]] * 7.0  # theta = 0 exactly
    x[1] = 0.0
    loss, grad_x, grad_w = _run(head, x, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad_x).all() and torch.isfinite(grad_w).all()


def test_empty_batch_gives_an_attached_zero():
    head = _partial()
    x = torch.zeros(0, D, dtype=torch.float64, requires_grad=True)
    loss = head(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and (head.weight.grad == 0).all()


# ------------------------------------------------------------------------------ layout, checkpoints
@pytest.mark.parametrize("num_classes,world_size", [(10, 1), (10, 2), (7, 2), (10, 3), (11, 4), (3, 3)])
def test_shard_range_is_an_even_contiguous_split(num_classes, world_size):
    ranges = [shard_range(num_classes, r, world_size) for r in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [end - start for start, end in ranges]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1
    assert sizes[0] == -(-num_classes // world_size)


def test_shards_of_any_world_size_concatenate_to_the_single_process_weight():
    full = PartialFCHead(7, D, seed=SEED).weight.detach()
    for world_size in (2, 3):
        heads = [PartialFCHead(7, D, rank=r, world_size=world_size, seed=SEED) for r in range(world_size)]
        shards = [head.weight.detach() for head in heads]
        assert torch.equal(torch.cat(shards), full)
    assert not torch.equal(PartialFCHead(7, D, seed=SEED + 1).weight, full)
    assert full.std().item() == pytest.approx(0.01, rel=0.3)


def test_reshard_two_ranks_to_three():
    """Checkpoint written by 2 ranks, resumed by 3: weight and a momentum-like tensor."""
    old = [PartialFCHead(7, D, rank=r, world_size=2, seed=SEED + 5) for r in range(2)]
    full = torch.cat([h.weight.detach() for h in old])  # what gather_rows builds (tested with 2 ranks)
    momentum = torch.arange(7 * D, dtype=torch.float64).view(7, D)
    new = [PartialFCHead(7, D, rank=r, world_size=3, seed=SEED) for r in range(3)]
    for head in new:
        head.load_full_weight(full)
    assert [h.num_local for h in new] == [3, 2, 2]
    assert torch.equal(torch.cat([h.weight.detach() for h in new]), full)
    assert torch.equal(torch.cat([h.shard_rows(momentum) for h in new]), momentum)
    single = PartialFCHead(7, D)
    single.load_full_weight(full)
    assert torch.equal(single.full_weight(), full)
    assert torch.equal(single.gather_rows(momentum), momentum)


def test_hparams_leave_the_process_layout_out():
    a = PartialFCHead(7, D, rank=1, world_size=2, sample_rate=0.5)
    b = PartialFCHead(7, D, rank=0, world_size=3, sample_rate=0.5)
    assert a.hparams() == b.hparams()
    assert "rank=1, world_size=2, classes=[4, 7)" in repr(a)


# ------------------------------------------------------------------------------ errors
def test_out_of_range_label_is_named():
    head = _partial()
    x, labels = _batch()
    labels[2] = C + 3
    with pytest.raises(ValueError, match=f"label {C + 3} at batch position 2"):
        head(x, labels)
    labels[2] = -1
    with pytest.raises(ValueError, match="label -1"):
        head(x, labels)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sub_centers": 3}, "sub-centers"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"rank": 2, "world_size": 2}, "rank must be in"),
        ({"world_size": 11}, "num_classes .* >= world_size"),
        ({"m2": 4.0}, "m2"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PartialFCHead(C, D, **kwargs)


def test_bad_shapes_for_resharding():
    head = PartialFCHead(C, D)
    with pytest.raises(ValueError, match=rf"shape \({C}, {D}\)"):
        head.load_full_weight(torch.zeros(C + 1, D))
    with pytest.raises(ValueError, match=f"{C} rows"):
        head.shard_rows(torch.zeros(C - 1, D))
    with pytest.raises(ValueError, match=f"{C} rows"):
        head.gather_rows(torch.zeros(3, D))


def test_several_ranks_need_a_process_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    head = PartialFCHead(C, D, rank=0, world_size=2)
    x, labels = _batch(torch.float32)
    with pytest.raises(RuntimeError, match="init_process_group"):
        head(x, labels)


# ------------------------------------------------------------------------------ two processes
WORLD = 2
LOCAL_B = 3
# name -> (num_classes, margin setting, extra head arguments, global labels)
TWO_RANK_CASES = {
    "arcface_even": (8, "arcface", {}, [0, 7, 3, 4, 4, 1]),
    "combined_uneven": (7, "combined", {}, [6, 0, 3, 4, 4, 1]),  # shards [0, 4) and [4, 7)
    "cosface_uneven": (7, "cosface", {}, [5, 5, 2, 6, 0, 3]),
    "arcface_straight_through": (7, "arcface_straight_through", {}, [1, 4, 2, 6, 3, 3]),
    "sampled": (16, "arcface", {"sample_rate": 0.5}, [0, 15, 2, 9, 9, 12]),
    "combined_chunked_uneven": (7, "combined", {"class_chunk": 2}, [6, 0, 3, 4, 4, 1]),
    "arcface_chunked_one_class": (8, "arcface", {"class_chunk": 1}, [0, 7, 3, 4, 4, 1]),
}


def _two_rank_batch(num_classes, labels):
    x, _ = _batch(torch.float64, seed=num_classes, batch=WORLD * LOCAL_B, num_classes=num_classes)
    return x, torch.tensor(labels)


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    results: dict = {}
    try:
        for case, (num_classes, setting, extra, label_list) in TWO_RANK_CASES.items():
            _, margins = _preset(setting)
            head = PartialFCHead(num_classes, D, rank=rank, world_size=WORLD, seed=SEED, **margins, **extra)
            head = head.double()
            x, labels = _two_rank_batch(num_classes, label_list)
            state = head.sampler_state()
            loss, grad_x, grad_w = _run(head, x[rows], labels[rows])
            head.load_sampler_state(state)
            results[case] = {
                "range": (head.class_start, head.class_end),
                "loss": loss,
                "grad_x": grad_x,
                "grad_w": grad_w,
                "index": head.sample_centers(labels),  # replays the draw forward made
                "full_weight": head.full_weight(),
                "gathered_grad": head.gather_rows(grad_w),
            }
        head = PartialFCHead(7, D, rank=rank, world_size=WORLD, seed=SEED).double()
        x, labels = _two_rank_batch(7, TWO_RANK_CASES["combined_uneven"][3])
        try:  # rank 0 passes 3 samples, rank 1 passes 2
            head(x[rows][: LOCAL_B - rank], labels[rows][: LOCAL_B - rank])
        except ValueError as exc:
            results["batch_size_error"] = str(exc)
        bad = labels[rows].clone()
        if rank == 1:
            bad[1] = 99
        try:
            head(x[rows], bad)
        except ValueError as exc:
            results["label_error"] = str(exc)
        # The group is still usable after both errors: every rank raised at the same point.
        results["after_errors"] = head(x[rows], labels[rows]).detach()
    finally:
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partial_fc_gloo")
    mp.spawn(_two_rank_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{rank}.pt") for rank in range(WORLD)]


def _full_reference(case):
    num_classes, setting, extra, label_list = TWO_RANK_CASES[case]
    full = PartialFCHead(num_classes, D, seed=SEED).weight.detach().double()
    x, labels = _two_rank_batch(num_classes, label_list)
    return full, x, labels, setting


@pytest.mark.slow
@pytest.mark.parametrize("case", [case for case in TWO_RANK_CASES if case != "sampled"])
def test_two_ranks_equal_the_single_process_head(two_ranks, case):
    full, x, labels, setting = _full_reference(case)
    ref_loss, ref_x, ref_w = _reference(full, x, labels, setting)
    assert torch.equal(two_ranks[0][case]["loss"], two_ranks[1][case]["loss"])
    for rank, result in enumerate(two_ranks):
        result = result[case]
        start, end = result["range"]
        assert (start, end) == shard_range(full.shape[0], rank, WORLD)
        torch.testing.assert_close(result["loss"], ref_loss)
        torch.testing.assert_close(result["grad_w"], ref_w[start:end])
        # Embedding gradients are world_size times the single-process ones (see _AllGatherRows):
        # DDP's averaging over ranks then gives the backbone the gradient of the global loss.
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        torch.testing.assert_close(result["grad_x"], WORLD * ref_x[rows])
        # Checkpoint gathering: the full matrix on every rank, padding trimmed on the uneven split.
        assert torch.equal(result["full_weight"], full)
        torch.testing.assert_close(result["gathered_grad"], ref_w)


@pytest.mark.slow
def test_two_ranks_with_sampling_equal_the_head_on_the_sampled_classes(two_ranks):
    full, x, labels, setting = _full_reference("sampled")
    sampled = torch.cat([r["sampled"]["index"] + r["sampled"]["range"][0] for r in two_ranks])
    assert set(labels.tolist()) <= set(sampled.tolist())
    assert [r["sampled"]["index"].numel() for r in two_ranks] == [4, 4]  # int(0.5 * 8) >= positives
    position = {int(c): i for i, c in enumerate(sampled)}
    ref_loss, ref_x, ref_w = _reference(full[sampled], x, torch.tensor([position[int(c)] for c in labels]))
    assert torch.equal(two_ranks[0]["sampled"]["loss"], two_ranks[1]["sampled"]["loss"])
    offset = 0
    for rank, result in enumerate(two_ranks):
        res = result["sampled"]
        index = res["index"]
        torch.testing.assert_close(res["loss"], ref_loss)
        torch.testing.assert_close(res["grad_w"][index], ref_w[offset : offset + index.numel()])
        unsampled = torch.ones(res["grad_w"].shape[0], dtype=torch.bool)
        unsampled[index] = False
        assert (res["grad_w"][unsampled] == 0).all()
        offset += index.numel()
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        torch.testing.assert_close(res["grad_x"], WORLD * ref_x[rows])


@pytest.mark.slow
def test_two_ranks_raise_together_on_bad_inputs(two_ranks):
    for result in two_ranks:
        assert "same batch size" in result["batch_size_error"] and "[3, 2]" in result["batch_size_error"]
        torch.testing.assert_close(result["after_errors"], two_ranks[0]["after_errors"])
    assert "label 99 at batch position 1" in two_ranks[1]["label_error"]
    assert "rank(s) [1]" in two_ranks[0]["label_error"]


def test_seeded_rows_of_any_split_equal_the_whole_matrix():
    from arcface.heads.init import INIT_CHUNK_ROWS, seeded_normal_rows

    rows = 2 * INIT_CHUNK_ROWS + 37
    whole = seeded_normal_rows(5, 0, rows, 4)
    cuts = [0, 1, INIT_CHUNK_ROWS - 1, INIT_CHUNK_ROWS + 5, rows]
    parts = [seeded_normal_rows(5, a, b, 4) for a, b in zip(cuts, cuts[1:])]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert whole.std().item() == pytest.approx(0.01, rel=0.05)
    assert not torch.equal(whole, seeded_normal_rows(6, 0, rows, 4))
