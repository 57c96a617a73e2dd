"""``arcface models list | pull | add | remove``: named face models and the model home."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import CommandError
from .common import progress, write_json

__all__ = ["register"]

log = logging.getLogger(__name__)

COLUMNS = ("name", "task", "dim", "input", "size", "licence", "accuracy (publisher)", "source", "state")


def _rows() -> list[dict]:
    from ..pretrained import is_pulled, list_models

    rows = []
    for entry in list_models():
        if entry.kind == "local":
            path = Path(entry.path)
            size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"
            state, source = ("local" if path.is_file() else "missing"), str(path)
        else:
            size, source = entry.size, entry.source or entry.url
            state = "pulled" if is_pulled(entry) else "not pulled"
        rows.append({"name": entry.name, "task": entry.task, "dim": str(entry.embedding_size or "-"), "input": entry.convention(),
                     "size": size, "licence": entry.licence, "accuracy (publisher)": entry.accuracy or "-", "source": source,
                     "state": state, "url": entry.url, "sha256": entry.sha256, "threshold": entry.threshold,
                     "description": entry.description})
    return rows


def _list(args: argparse.Namespace) -> int:
    from ..home import arcface_home

    log.info("model home: %s ($ARCFACE_HOME)", arcface_home())
    rows = _rows()
    if args.json:
        write_json({"home": str(arcface_home()), "models": rows})
        return 0
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}
    sys.stdout.write("  ".join(column.upper().ljust(widths[column]) for column in COLUMNS).rstrip() + "\n")
    for row in rows:
        sys.stdout.write("  ".join(row[column].ljust(widths[column]) for column in COLUMNS).rstrip() + "\n")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from ..pretrained import get_model, pull

    for name in args.names:
        entry = get_model(name)
        path = pull(name, force=args.force, progress=progress(args))
        sys.stdout.write(f"{name}\t{path}\n")
        if entry.licence.startswith("non-commercial"):
            log.warning("%s: licence: %s", name, entry.licence)
    return 0


def _add(args: argparse.Namespace) -> int:
    from ..model import load_face_model
    from ..pretrained import ModelEntry, add_local_model

    path = Path(args.path)
    if not path.is_file():
        raise CommandError(f"{path}: model file not found")
    layout, embedding_size = (args.input_layout or "auto"), None
    mean, std, bgr = (127.5 if args.input_mean is None else args.input_mean), (127.5 if args.input_std is None else args.input_std), bool(args.bgr)
    if args.task == "recognition":  # load it once: a model that does not load is not registered
        model, info = load_face_model(path, input_mean=args.input_mean, input_std=args.input_std, input_layout=layout, bgr=args.bgr)
        layout, embedding_size = info.input_layout, info.embedding_size
        mean, std, bgr = info.input_mean, info.input_std, info.bgr  # the flags, else what the file says about itself
    entry = ModelEntry(
        name=args.name, task=args.task, description=args.description or f"local model {path.name}", licence=args.licence,
        accuracy=args.accuracy or "", path=str(path), embedding_size=embedding_size, input_mean=mean, input_std=std,
        channel_order="BGR" if bgr else "RGB", layout="NCHW" if layout in ("auto", "nchw") else "NHWC", threshold=args.threshold,
    )
    entry = add_local_model(entry, replace_existing=args.replace)
    sys.stdout.write(f"{entry.name}\t{entry.path}\t{entry.convention()}\t{entry.embedding_size or '-'}-D\n")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from ..pretrained import remove_local_model

    remove_local_model(args.name)
    log.info("%s removed from the registry (the file itself is kept)", args.name)
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    models = verbs.add_parser(
        "models", help="named face models: list, pull into the model home, register local files",
        description="The model home is $ARCFACE_HOME (default ~/.cache/arcface): models/<name>/ holds what `pull` "
        "fetched (with manifest.json: checksums), models.json the entries `add` registered. A registry name can be "
        "given to --model of verify, embed, search, gallery build and to eval; its input convention comes with it.",
    )
    models.set_defaults(verb_parser=models)
    actions = models.add_subparsers(dest="action", metavar="ACTION")

    listing = actions.add_parser("list", help="every known model: task, embedding size, input convention, size, licence, accuracy, source")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    listing.set_defaults(handler=_list)

    pull = actions.add_parser(
        "pull", help="download models into the model home (streamed, checksum verified, renamed into place; once)",
        description="A pinned sha256 is checked where the publisher gives one; otherwise the first download's sha256 is "
        "recorded in the model's manifest.json and the file is checked against it at every load. Archives are "
        "unpacked only when no member name is absolute or contains '..'. A second pull downloads nothing.",
    )
    pull.add_argument("names", nargs="+", metavar="NAME", help="registry name(s), see `arcface models list`")
    pull.add_argument("--force", action="store_true", help="download again even when the model is already in the home")
    pull.set_defaults(handler=_pull)

    add = actions.add_parser(
        "add", help="register a local model file (e.g. one this project trained and exported) under a name",
        description="The file is loaded once to check it and to read its embedding size. Its input convention is "
        "stored, so `--model NAME` (or the file's path) needs no input flags afterwards.",
    )
    add.add_argument("name", help="the name to use with --model")
    add.add_argument("path", help="the model file: .onnx, arcface checkpoint .pt, ...")
    add.add_argument("--task", default="recognition", choices=["recognition", "detection"], help="what the model does")
    add.add_argument("--input-mean", type=float, help="ONNX: pixel mean subtracted (default: 127.5)")
    add.add_argument("--input-std", type=float, help="ONNX: divisor after the mean (default: 127.5; many models use 128)")
    add.add_argument("--input-layout", choices=["auto", "nchw", "nhwc"], help="ONNX: input layout (default: read from the input's shape)")
    add.add_argument("--bgr", action="store_true", default=None, help="ONNX: the model expects BGR (default: RGB)")
    add.add_argument("--threshold", type=float, help="cosine verification threshold (e.g. from `arcface eval --out`; default: none, 0.3 is used)")
    add.add_argument("--licence", default="as its owner states", help="licence to show in `models list`")
    add.add_argument("--accuracy", help="accuracy to show in `models list` (say where it was measured)")
    add.add_argument("--description", help="one line to describe it")
    add.add_argument("--replace", action="store_true", help="replace an entry of the same name")
    add.set_defaults(handler=_add)

    remove = actions.add_parser("remove", help="unregister a local model (the file is kept)")
    remove.add_argument("name", help="a name registered with `arcface models add`")
    remove.set_defaults(handler=_remove)
