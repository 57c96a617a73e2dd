"""What every verb shares: -v/-q before or after the verb, defaults and positional help in --help,
--json documents that hold the text output's numbers, search's unknown answer, flags in messages."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface.cli import build_parser, flag_spelling, main
from arcface.recognizer import DEFAULT_THRESHOLD

onnx = pytest.importorskip("onnx", reason="building test ONNX models needs the onnx package (pip install -e '.[test]')")
pytest.importorskip("onnxruntime", reason="ONNX models need onnxruntime (pip install -e '.[test]')")
from test_eval_cli import SIZE, linear_onnx  # noqa: E402


def leaf_parsers(parser: argparse.ArgumentParser, path=()):
    """(verb path, parser) of every parser in the command tree."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from leaf_parsers(child, (*path, name))


PARSERS = list(leaf_parsers(build_parser()))


@pytest.mark.parametrize("path, parser", PARSERS, ids=[" ".join(path) or "arcface" for path, _ in PARSERS])
def test_every_parser_takes_v_and_q_shows_defaults_and_explains_positionals(path, parser):
    options = {option for action in parser._actions for option in action.option_strings}
    assert {"-v", "--verbose", "-q", "--quiet"} <= options
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:
            assert action.help, f"{' '.join(path)}: positional {action.dest} has no help"
        elif action.nargs != 0 and action.default not in (None, False, [], argparse.SUPPRESS):
            formatter = parser._get_formatter()
            shown = formatter._format_action(action)
            assert "default" in shown, f"{' '.join(path)} {action.option_strings[0]}: default {action.default!r} not shown"
            assert str(action.default) in text or "%(default)" not in (action.help or "")


def test_v_and_q_work_before_and_after_the_verb():
    parser = build_parser()
    base = ["verify", "a.jpg", "b.jpg", "--model", "m.onnx"]
    assert parser.parse_args(["-v", *base]).verbose is True
    assert parser.parse_args([*base, "-v"]).verbose is True
    assert parser.parse_args([*base, "--quiet"]).quiet is True
    assert parser.parse_args(["data", "align", "src", "dst", "-q"]).quiet is True
    assert not hasattr(parser.parse_args(base), "verbose")  # main() reads it with a fallback: nothing reset after the verb


def test_q_after_the_verb_silences_the_logs_of_a_real_process(tmp_path):
    env = {**os.environ, "ARCFACE_HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    loud = subprocess.run([sys.executable, "-m", "arcface.cli", "models", "list", "-v"], capture_output=True, text=True, env=env)
    quiet = subprocess.run([sys.executable, "-m", "arcface.cli", "models", "list", "-q"], capture_output=True, text=True, env=env)
    assert loud.returncode == quiet.returncode == 0
    assert "model home" in loud.stderr and quiet.stderr == ""
    assert loud.stdout == quiet.stdout and "buffalo_l" in quiet.stdout


def test_messages_name_flags_not_python_arguments():
    parser = build_parser()
    assert flag_spelling("photo.jpg: pass aligned=True for aligned faces", parser) == "photo.jpg: pass --aligned for aligned faces"
    assert flag_spelling("x: pass detector=PATH or run it", parser) == "x: pass --detector PATH or run it"
    assert flag_spelling("fallback_fraction must be in (0, 1], got 2", parser) == "--fallback-fraction must be in (0, 1], got 2"
    assert flag_spelling("batch_size must be >= 1, got 0", parser) == "--batch-size must be >= 1, got 0"
    assert flag_spelling("workers must be >= 1, got 0", parser) == "--workers must be >= 1, got 0"
    assert flag_spelling("data: workers must be >= 1", parser) == "data: --workers must be >= 1"
    for unchanged in ("the workers of this run", "the model must return (B, D) embeddings", "/data/input_std/x.onnx: not found",
                      "use_faiss=True but faiss is not installed"):
        assert flag_spelling(unchanged, parser) == unchanged


@pytest.fixture
def people(tmp_path):
    rng = np.random.default_rng(0)
    model = linear_onnx(tmp_path / "m.onnx", rng.standard_normal((3 * SIZE * SIZE, 8)) / 100, [3, SIZE, SIZE])
    for name in ("ann", "bob", "cid"):
        base = rng.integers(0, 256, (SIZE, SIZE, 3))
        for k in range(2):
            path = tmp_path / "people" / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    return model, tmp_path / "people"


def run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    status = main([*argv, "--device", "cpu", "-q"])
    return status, capsys.readouterr().out


def test_verify_json_holds_the_numbers_of_the_text_line(people, capsys):
    model, root = people
    for b, threshold in ((root / "ann" / "1.png", "0.5"), (root / "bob" / "0.png", "0.5")):
        args = ["verify", str(root / "ann" / "0.png"), str(b), "--model", str(model), "--threshold", threshold]
        status, text = run(capsys, *args)
        status_json, document = run(capsys, *args, "--json")
        report = json.loads(document)
        score, word = text.split()[:2]
        assert status == status_json == 0
        assert f"{report['cosine']:.4f}" == score and report["decision"] == word and report["same"] == (word == "same")
        assert report["threshold"] == float(threshold) and (report["cosine"] > report["threshold"]) == report["same"]


def test_search_answers_unknown_below_the_threshold_and_json_matches_the_text(people, tmp_path, capsys):
    model, root = people
    assert main(["gallery", "build", str(root), "--model", str(model), "--out", str(tmp_path / "g.npz"), "--device", "cpu", "-q"]) == 0
    query = str(root / "cid" / "1.png")
    common = ["search", query, "--gallery", str(tmp_path / "g.npz"), "--model", str(model), "-k", "3"]
    _, text = run(capsys, *common)
    _, document = run(capsys, *common, "--json")
    report = json.loads(document)
    assert report["threshold"] == DEFAULT_THRESHOLD  # no entry, no report beside the model
    (answer,) = report["queries"]
    lines = [line.split("\t") for line in text.splitlines()]
    assert lines[0][:2] == ["answer", answer["answer"]] and answer["answer"] == "cid"
    assert [(line[1], line[2]) for line in lines[1:]] == [(m["name"], f"{m['score']:.4f}") for m in answer["matches"]]
    best = answer["matches"][0]["score"]
    _, document = run(capsys, *common, "--json", "--threshold", str(best + 1e-3))
    assert json.loads(document)["queries"][0]["answer"] == "unknown"
    _, text = run(capsys, *common, "--threshold", str(best + 1e-3))
    assert text.splitlines()[0].split("\t")[:2] == ["answer", "unknown"]
    # A registered model brings its own threshold.
    assert main(["models", "add", "lin", str(model), "--threshold", str(best + 1e-3), "-q"]) == 0
    _, document = run(capsys, *common[:-4], "--model", "lin", "--json")
    assert json.loads(document)["queries"][0]["answer"] == "unknown"


def test_embed_json_and_out_hold_the_same_embeddings(people, tmp_path, capsys):
    model, root = people
    status, document = run(capsys, "embed", str(root), "--model", str(model), "--json", "--out", str(tmp_path / "e.npy"))
    report = json.loads(document)
    matrix = np.load(tmp_path / "e.npy")
    assert status == 0 and len(report["photos"]) == 6 == len(matrix)
    np.testing.assert_allclose(np.array([p["embedding"] for p in report["photos"]]), matrix, atol=1e-6)
    statuses = json.loads((tmp_path / "e.json").read_text())["status"]
    assert list(statuses) == [p["photo"] for p in report["photos"]]
    status, document = run(capsys, "embed", str(root / "ann" / "0.png"), "--model", str(model), "--json", "--all-faces")
    (photo,) = json.loads(document)["photos"]
    (face,) = photo["faces"]  # an aligned photo is one face: the whole image, the template's landmarks
    assert face["box"] == [0, 0, SIZE, SIZE] and face["score"] is None
    np.testing.assert_allclose(face["embedding"], matrix[0], atol=1e-6)
    assert main(["embed", str(root), "--model", str(model)]) == 2  # neither --out nor --json
