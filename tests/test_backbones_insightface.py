"""Parity with insightface arcface_torch backbones, from ../shared/fixtures/insightface_backbones.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arcface.backbones import INSIGHTFACE_NAMES, create_backbone, from_insightface
from conftest import shared_path

FIXTURE_NAMES = ["r18", "r34", "r50", "r100", "mbf"]


@pytest.fixture(scope="module")
def fixture():
    return json.loads(shared_path("fixtures/insightface_backbones.json").read_text())


def _state_dict_from_rule(entries: list) -> dict[str, torch.Tensor]:
    """The fixture's closed-form weights, numbered over all entries in insightface's order."""
    state = {}
    for index, (key, shape, dtype) in enumerate(entries):
        if dtype != "float32":
            state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
            continue
        count = int(np.prod(shape)) if shape else 1
        u = np.mod(np.arange(count, dtype=np.float64) * 0.6180339887498949 + index * 0.4142135623730951, 1.0) - 0.5
        if key.endswith("running_var"):
            values = 1.0 + 2.0 * u * u
        elif len(shape) >= 2:
            values = u * np.sqrt(12.0 / (count // shape[0]))
        elif key.endswith("weight"):
            values = 1.0 + u
        else:
            values = 0.02 * u
        state[key] = torch.from_numpy(values.reshape(shape).astype(np.float32))
    return state


def _input_from_rule() -> torch.Tensor:
    values = np.sin(np.arange(2 * 3 * 112 * 112, dtype=np.float64) * 0.001).reshape(2, 3, 112, 112)
    return torch.from_numpy(values.astype(np.float32))


@pytest.mark.parametrize("insightface_name", FIXTURE_NAMES)
def test_state_dict_layout_params_and_flops_match(fixture, insightface_name):
    expected = fixture[insightface_name]
    model = create_backbone(INSIGHTFACE_NAMES[insightface_name]).eval()
    layout = [[key, list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in model.state_dict().items()]
    assert layout == expected["keys"]
    assert sum(p.numel() for p in model.parameters()) == expected["params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected["trainable_params"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 112, 112))
    assert counter.get_total_flops() == expected["flops"]


@pytest.mark.parametrize("insightface_name", ["r18", "mbf"])
def test_deterministic_weights_reproduce_insightface_outputs(fixture, insightface_name):
    entry = fixture[insightface_name]
    vector = entry["test_vector"]
    expected = np.array(vector["output"])
    model = from_insightface(insightface_name, _state_dict_from_rule(entry["keys"]))
    with torch.no_grad():
        output = model(_input_from_rule()).numpy()
    assert list(output.shape) == vector["output_shape"]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4 * scale)


def test_from_insightface_accepts_ddp_prefix_and_wrapped_checkpoints(fixture):
    state = _state_dict_from_rule(fixture["mbf"]["keys"])
    reference = from_insightface("mbf", state)
    wrapped = {"state_dict": {f"module.{key}": value for key, value in state.items()}, "epoch": 3}
    loaded = from_insightface("mobilefacenet", wrapped)
    for (key, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_from_insightface_mismatch_is_a_clear_error(fixture):
    state = _state_dict_from_rule(fixture["r18"]["keys"])
    with pytest.raises(ValueError, match=r"does not match iresnet34 .* 144 missing keys \[layer1.2.bn1.bias"):
        from_insightface("r34", state)
    with pytest.raises(ValueError, match="unknown backbone 'r51'"):
        from_insightface("r51", state)
    state.pop("fc.bias")
    with pytest.raises(ValueError, match=r"1 missing keys \[fc.bias\], 0 unexpected"):
        from_insightface("r18", state)


def test_direct_strict_load_of_an_insightface_state_dict(fixture):
    model = create_backbone("iresnet50")
    model.load_state_dict(_state_dict_from_rule(fixture["r50"]["keys"]), strict=True)
