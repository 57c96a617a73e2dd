"""``arcface embed | verify | search | gallery build``: a model on photos."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import CommandError
from .common import (
    add_detector_argument,
    add_device_argument,
    add_model_argument,
    add_model_input_arguments,
    load_recognizer,
    progress,
    write_json,
)

__all__ = ["register"]

log = logging.getLogger(__name__)

THRESHOLD_DEFAULT = ("the registry entry's verification threshold, else the one in an `arcface eval --out MODEL.json` report "
                     "beside the model, else 0.3")


def _aligned(args: argparse.Namespace) -> bool | None:
    return True if args.aligned else None


def _photos(given: list[str]) -> list[str]:
    """Photos named, and every image under the folders named (sorted)."""
    from ..data.align_job import list_images

    photos = []
    for item in given:
        if os.path.isdir(item):
            found = [str(Path(item) / relative) for relative in list_images(Path(item))]
            if not found:
                raise CommandError(f"{item}: no images in this folder")
            photos.extend(found)
        else:
            photos.append(item)
    return photos


def _model_name(recognizer) -> str:
    return recognizer.entry.name if recognizer.entry is not None else recognizer.info.path


def _embed(args: argparse.Namespace) -> int:
    if not args.out and not args.json:
        raise CommandError("give --out OUT.npy (embeddings + OUT.json statuses) or --json (one JSON document on stdout)")
    photos = _photos(args.photos)
    recognizer = load_recognizer(args, photos[0])
    result = recognizer.embed(photos, _aligned(args), all_faces=args.all_faces, progress=progress(args))
    records = []
    rows = []
    for index, (photo, state) in enumerate(zip(photos, result.status)):
        record = {"photo": photo, "status": state}
        if args.all_faces:
            record["faces"] = []
            for face in result.faces[index]:
                record["faces"].append({"row": len(rows), **face.to_dict()} | ({"embedding": face.embedding.tolist()} if args.json else {}))
                rows.append(face.embedding)
        elif args.json:
            record["embedding"] = result.embeddings[index].tolist() if state.startswith("ok") else None
        records.append(record)
    failed = int((~result.ok).sum())
    document = {"model": recognizer.info.to_dict() | {"name": _model_name(recognizer)}, "photos": records}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        matrix = (np.stack(rows) if rows else np.zeros((0, recognizer.info.embedding_size), np.float32)) if args.all_faces else result.embeddings
        temporary = out.with_name(out.stem + ".tmp.npy")
        np.save(temporary, matrix)
        os.replace(temporary, out)
        if args.all_faces:
            side = document
        else:  # the statuses file keeps its established shape: {"model": ..., "status": {photo: state}}
            side = {"model": document["model"], "status": {photo: state for photo, state in zip(photos, result.status)}}
        out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
        what = f"{len(rows)} faces" if args.all_faces else f"{len(photos) - failed} of {len(photos)} photos embedded"
        log.info("%s -> %s (per photo in %s)", what, out, out.with_suffix(".json"))
    if args.json:
        write_json(document)
    return 0 if failed == 0 else 1


def _verify(args: argparse.Namespace) -> int:
    recognizer = load_recognizer(args, args.a, threshold=args.threshold)
    score, same = recognizer.verify(args.a, args.b, _aligned(args))
    if args.json:
        write_json({"a": args.a, "b": args.b, "cosine": round(score, 6), "same": bool(same), "decision": "same" if same else "different",
                    "threshold": recognizer.threshold, "model": _model_name(recognizer)})
    else:
        sys.stdout.write(f"{score:.4f} {'same' if same else 'different'} (threshold {recognizer.threshold:.4f})\n")
    return 0


def _gallery_build(args: argparse.Namespace) -> int:
    from ..recognizer import Gallery

    recognizer = load_recognizer(args, Path(args.folder))
    gallery = Gallery.build(recognizer, args.folder, _aligned(args), progress=progress(args))
    gallery.save(args.out)
    log.info("gallery of %d photos of %d identities -> %s", len(gallery.names), len(set(gallery.names)), args.out)
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..recognizer import Gallery

    if args.k < 1:
        raise CommandError(f"-k must be >= 1, got {args.k}")
    gallery = Gallery.load(args.gallery)
    photos = _photos(args.photos)
    recognizer = load_recognizer(args, photos[0], threshold=args.threshold)
    if recognizer.info.embedding_size != gallery.embeddings.shape[1]:
        raise CommandError(f"the gallery holds {gallery.embeddings.shape[1]}-D embeddings; this model gives {recognizer.info.embedding_size}-D")
    result = recognizer.embed(photos, _aligned(args), progress=progress(args))
    usable = [i for i, ok in enumerate(result.ok) if ok]
    answers = dict(zip(usable, gallery.identify(result.embeddings[usable], recognizer.threshold, args.k))) if usable else {}
    queries = []
    for index, photo in enumerate(photos):
        if index not in answers:
            queries.append({"photo": photo, "status": result.status[index], "answer": None, "matches": []})
            continue
        answer, matches = answers[index]
        queries.append({"photo": photo, "status": result.status[index], "answer": answer if answer is not None else "unknown",
                        "matches": [{"rank": rank, "name": name, "score": round(score, 6)} for rank, (name, score) in enumerate(matches, 1)]})
    if args.json:
        write_json({"model": _model_name(recognizer), "threshold": recognizer.threshold, "k": args.k, "queries": queries})
    else:
        for query in queries:
            prefix = f"{query['photo']}\t" if len(photos) > 1 else ""
            if not query["matches"]:
                sys.stdout.write(f"{prefix}answer\t-\t{query['status']}\n")
                continue
            best = query["matches"][0]["score"]
            relation = ">" if query["answer"] != "unknown" else "<="
            sys.stdout.write(f"{prefix}answer\t{query['answer']}\t{best:.4f} {relation} threshold {recognizer.threshold:.4f}\n")
            for match in query["matches"]:
                sys.stdout.write(f"{prefix}{match['rank']}\t{match['name']}\t{match['score']:.4f}\n")
    failed = [q["photo"] for q in queries if not q["matches"]]
    if failed:
        log.warning("%d photo(s) without a usable face: %s", len(failed), ", ".join(failed[:5]))
    return 0 if not failed else 1


def _photo_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    add_model_input_arguments(parser)
    photos = parser.add_argument_group("photos and running")
    add_detector_argument(photos)
    photos.add_argument("--aligned", action="store_true", help="the photos are aligned 112x112 faces: no detection")
    add_device_argument(photos)


def register(verbs: argparse._SubParsersAction) -> None:
    embed = verbs.add_parser(
        "embed", help="embed photos: OUT.npy (N, D), NaN rows for photos without a usable face, OUT.json statuses",
        description="Embed photos (or every image under folders) with a face model. With --all-faces every face of "
        "every photo gets a row, and OUT.json (or --json) gives each face's box, five landmarks and detector score.",
    )
    embed.add_argument("photos", nargs="+", metavar="PHOTO_OR_DIR", help="photos, or folders whose images (at any depth) are embedded")
    embed.add_argument("--out", help="output .npy (and a .json of statuses beside it)")
    embed.add_argument("--json", action="store_true", help="print one JSON document (statuses, embeddings, faces) on stdout")
    embed.add_argument("--all-faces", action="store_true",
                       help="every face in each photo (rows of OUT.npy in the order of OUT.json's faces), not only the one nearest the center")
    _photo_arguments(embed)
    embed.set_defaults(handler=_embed)

    verify = verbs.add_parser("verify", help="are two photos the same person? prints the cosine and same/different")
    verify.add_argument("a", metavar="PHOTO_A", help="first photo")
    verify.add_argument("b", metavar="PHOTO_B", help="second photo")
    verify.add_argument("--threshold", type=float, help=f"cosine above which the answer is same (default: {THRESHOLD_DEFAULT})")
    verify.add_argument("--json", action="store_true", help="print one JSON object (cosine, same, decision, threshold) instead of the line")
    _photo_arguments(verify)
    verify.set_defaults(handler=_verify)

    search = verbs.add_parser(
        "search", help="who is in a photo? the k gallery identities nearest it, or unknown below --threshold",
        description="For each photo: the answer (the best identity when its cosine is above --threshold, else unknown) "
        "and the k nearest gallery identities with their cosines.",
    )
    search.add_argument("photos", nargs="+", metavar="PHOTO", help="photo(s) of the person to find (folders: every image in them)")
    search.add_argument("--gallery", required=True, help="gallery .npz from `arcface gallery build`")
    search.add_argument("-k", type=int, default=5, help="how many nearest identities to list")
    search.add_argument("--threshold", type=float, help=f"below this cosine the answer is unknown (default: {THRESHOLD_DEFAULT})")
    search.add_argument("--json", action="store_true", help="print one JSON document (answers and matches) instead of the lines")
    _photo_arguments(search)
    search.set_defaults(handler=_search)

    gallery = verbs.add_parser("gallery", help="build a gallery of known people for `arcface search`")
    gallery.set_defaults(verb_parser=gallery)
    actions = gallery.add_subparsers(dest="action", metavar="ACTION")
    build = actions.add_parser("build", help="embed DIR/<identity>/<photo> into a gallery .npz")
    build.add_argument("folder", metavar="DIR", help="one sub-folder per identity, named after it, holding its photos")
    build.add_argument("--out", required=True, help="output .npz")
    _photo_arguments(build)
    build.set_defaults(handler=_gallery_build)
