"""What every verb shares: the parser class (global -v/-q, defaults in --help), model input flags,
device, detector lookup, progress and JSON output. Commands import these; no command imports
another command's helpers.
"""

from __future__ import annotations

import argparse
import re
import copy
import json
import sys
from pathlib import Path

from . import CommandError

__all__ = [
    "ArcfaceParser",
    "HelpFormatter",
    "MODEL_HELP",
    "add_model_argument",
    "add_model_input_arguments",
    "add_detector_argument",
    "add_device_argument",
    "device",
    "progress",
    "detector_for",
    "load_model",
    "load_recognizer",
    "write_json",
]

MODEL_HELP = ("a registry name (`arcface models list`; pulled into $ARCFACE_HOME on first use), an arcface checkpoint .pt "
              "or run folder, an insightface backbone .pth (with --arch), or an .onnx face model")
FROM_MODEL = "from the registry entry or model file, else"


def _shows_default(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs != 0 and action.default not in (None, False, [], argparse.SUPPRESS)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with every option's default, including options written without a help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class ArcfaceParser(argparse.ArgumentParser):
    """Every parser of the command (sub-parsers inherit the class) takes ``-v``/``-q``, so they work
    before or after the verb; their default is SUPPRESS so a sub-parser never resets what was given
    before the verb, and :func:`arcface.cli.main` reads them with a fallback."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="debug logging (accepted before or after the verb)")
        self.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                          help="warnings and errors only, no progress bars (accepted before or after the verb)")


def add_model_argument(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    else:
        parser.add_argument("--model", required=True, metavar="NAME_OR_PATH", help=MODEL_HELP)


def add_model_input_arguments(parser) -> None:
    """--arch and the ONNX input convention; None means: the registry entry's (or the model file's)."""
    group = parser.add_argument_group("model input (a registry entry brings its own; flags given here override it)")
    group.add_argument("--arch", help="backbone of an insightface .pth (r50, r100, mbf, iresnet50, ...)")
    group.add_argument("--input-mean", type=float, help=f"ONNX: pixel mean subtracted (default: {FROM_MODEL} 127.5)")
    group.add_argument("--input-std", type=float, help=f"ONNX: divisor after the mean (default: {FROM_MODEL} 127.5; many models use 128)")
    group.add_argument("--input-layout", choices=["auto", "nchw", "nhwc"],
                       help=f"ONNX: input layout (default: {FROM_MODEL} read from the input's shape)")
    group.add_argument("--bgr", action="store_true", default=None, help=f"ONNX: the model expects BGR (default: {FROM_MODEL} RGB)")


def add_detector_argument(parser) -> None:
    from ..home import DETECTOR_LOOKUP

    parser.add_argument("--detector", metavar="PATH", help=f"YuNet face detector .onnx (default: {DETECTOR_LOOKUP})")


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested != "cpu" and not re.fullmatch(r"cuda(:\d+)?", requested):
        raise CommandError(f"--device {requested}: expected auto, cpu, cuda or cuda:N")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError("--device cuda but no CUDA device is available; use --device cpu")
    return requested


def progress(args: argparse.Namespace) -> bool | None:
    """False with -q; otherwise None: the library shows a bar on a terminal."""
    return False if getattr(args, "quiet", False) else None


def detector_for(args: argparse.Namespace, near: str | Path | None, required: bool = False) -> str | None:
    from ..home import find_detector

    return find_detector(getattr(args, "detector", None), near, required=required)


def load_model(args: argparse.Namespace):
    """(model, info, entry) for the evaluation commands: a registry name or a path, with its input convention."""
    from ..model import load_named_model

    return load_named_model(args.model, download=True, progress=progress(args), architecture=args.arch, input_mean=args.input_mean,
                            input_std=args.input_std, input_layout=args.input_layout, bgr=args.bgr)


def load_recognizer(args: argparse.Namespace, near: str | Path | None, threshold: float | None = None):
    """A FaceRecognizer from the shared flags; the detector is looked up near the photos (none for --aligned)."""
    from ..recognizer import FaceRecognizer

    detector = None if getattr(args, "aligned", False) else detector_for(args, near)
    return FaceRecognizer.from_pretrained(
        args.model, download=True, detector=detector, arch=args.arch, input_mean=args.input_mean, input_std=args.input_std,
        input_layout=args.input_layout, bgr=args.bgr, threshold=threshold, device=device(args.device), progress=progress(args),
    )


def write_json(document: object) -> None:
    """One JSON document on stdout (logs go to stderr)."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()
