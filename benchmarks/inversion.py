"""Identity of inverted faces, judged by an independent model (the MobileFaceNet, never used to invert).

Close-set: invert ``--identities`` training classes of a model trained by the LFW recipe (from their
class centers). Open-set: invert the embedding of one real photo (image 1 of a same-person pair of
``pairsDevTest.txt``) of as many unseen people. The judge embeds every generated image and the real
photos: close-set, all training photos of the chosen classes; open-set, the *other* photo of each
pair (not the one that was inverted). Each identity's template is the normalized mean of its photos'
embeddings. ``--min-photos N`` draws the close-set classes among those with at least N training photos
(default 1: any class). Printed per variant of the optimization (``--variants``), one figure a line:

    <set>_<variant>_rank1_pct       generated images whose nearest template (of the N) is their own
    <set>_<variant>_rank1_ci95_*    its 95% Wilson interval (images taken as independent draws)
    <set>_<variant>_cos_own         mean cosine to their own identity's template
    <set>_<variant>_cos_others      mean cosine to the other identities' templates
    <set>_<variant>_vs_<first>_gained / _lost   (second variant on) images this variant gets right and
                                    the first variant of the run does not / the other way round

and PNG grids (``<out>/inversion_<set>_<variant>.png``: open-set rows start with the real photo), and
per generated image its hit and cosines (``<out>/judged_<set>_<variant>.tsv``; identity = row of the set),
and the generated images themselves (``<out>/images_<set>_<variant>.npy``, (N, starts, 3, 112, 112) float16 in [-1, 1]).
Variants: ``lambda0.05`` (the paper's prior weight with all our defaults), ``lambda0`` (no BatchNorm
prior), ``no_jitter_flip`` (prior on, no random shift or mirror), ``pixels`` (the earlier defaults:
Adam on the pixels at lr 0.1, open-set L2 weight 1), or
``name:key=value,...`` with InversionConfig fields. Chance rank-1 is 100/N %. Targets: close-set at
least 50%, open-set at least 30% (N = 50).

    .venv/bin/python benchmarks/inversion.py --run runs/lfw_full --train-list runs/cache/lfw_devtrain.txt \\
        --aligned runs/cache/lfw_aligned --lfw ../shared/data/lfw_deepfunneled \\
        --judge ../shared/data/models/mobilefacenet_onnx/mobilefacenet.onnx --steps 500
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from arcface.eval import embed_images
from arcface.model import SpecAdapter, load_face_model
from arcface.eval.images import FaceImages
from arcface.invert import InversionConfig, invert_classes, invert_embeddings, load_for_inversion, save_grid

log = logging.getLogger("benchmarks.inversion")


def emit(key: str, value) -> None:
    print(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}", flush=True)


def class_photos(train_list: Path, aligned: Path) -> dict[int, list[str]]:
    photos: dict[int, list[str]] = defaultdict(list)
    for line in train_list.read_text().splitlines():
        if line.strip():
            path, label = line.rsplit(" ", 1)
            photos[int(label)].append(str(aligned / Path(path).parent.name / Path(path).name))
    return photos


def unseen_people(pairs_file: Path, aligned: Path) -> list[tuple[str, str]]:
    """(inverted photo, judge photo) of each person of the same-person pairs, first pair per person."""
    seen, people = set(), []
    for line in pairs_file.read_text().splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] not in seen:
            name = fields[0]
            seen.add(name)
            people.append(tuple(str(aligned / name / f"{name}_{int(n):04d}.jpg") for n in fields[1:]))
    return people


def draw_targets(seed: int, eligible: list[int], people_count: int, identities: int) -> tuple[list[int], list[int]]:
    """The draw of ``--seed``: ``identities`` classes among ``eligible`` (close-set) and as many indices
    into the unseen people (open-set), both sorted; the same seed gives the same targets to every model."""
    rng = np.random.default_rng(seed)
    classes = sorted(rng.choice(eligible, size=identities, replace=False).tolist())
    people = sorted(rng.choice(people_count, size=identities, replace=False).tolist())
    return classes, people


def templates(judge, groups: list[list[str]]) -> torch.Tensor:
    paths = [p for group in groups for p in group]
    embeddings = torch.from_numpy(embed_images(judge, FaceImages(paths, "/", align="none"), batch_size=64))
    rows, start = [], 0
    for group in groups:
        rows.append(torch.nn.functional.normalize(embeddings[start : start + len(group)].mean(0), dim=0))
        start += len(group)
    return torch.stack(rows)


def wilson_interval(hits: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of the proportion hits / total: the p0 with |hits/total - p0| <= z * sqrt(p0 (1 - p0) / total).

    It treats the images as independent draws; several starts of one class are not (the class decides
    more than the start, docs/inversion.md), so with ``--starts`` > 1 the true interval is wider."""
    p, n = hits / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def judge_images(judge, images: torch.Tensor, gallery: torch.Tensor, rows: Path | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """images (N, S, 3, H, W) of identity i in row i; gallery (N, D) templates.

    Returns the figures (rank-1 with its 95% Wilson interval, mean cosines) and the (N*S,) bool hits,
    image by image in (identity, start) order. With ``rows``, also writes one line per generated image
    there (identity row, start, hit, cosines)."""
    count, starts = images.shape[:2]
    embeddings = torch.from_numpy(embed_images(judge, images.flatten(0, 1), batch_size=64))
    cos = embeddings @ gallery.T  # (N*S, N)
    own = torch.arange(count).repeat_interleave(starts)
    hits = cos.argmax(1) == own
    own_cos = cos[torch.arange(len(own)), own]
    others = (cos.sum(1) - own_cos) / (count - 1)
    if rows is not None:
        rows.write_text("identity\tstart\trank1_hit\tcos_own\tcos_best_other\n" + "".join(
            f"{i}\t{k % starts}\t{int(hit)}\t{c:.4f}\t{best:.4f}\n"
            for k, (i, hit, c, best) in enumerate(zip(own.tolist(), hits.tolist(), own_cos.tolist(),
                                                      cos.scatter(1, own[:, None], -2.0).max(1).values.tolist()))))
    low, high = wilson_interval(int(hits.sum()), len(hits))
    figures = {"rank1_pct": 100 * hits.double().mean().item(), "rank1_ci95_low_pct": 100 * low, "rank1_ci95_high_pct": 100 * high,
               "cos_own": own_cos.mean().item(), "cos_others": others.mean().item()}
    return figures, hits


VARIANTS: dict[str, dict] = {
    "lambda0.05": {},
    "lambda0": {"lambda_bn": 0.0},
    "no_jitter_flip": {"jitter": 0, "flip": False},
    # the defaults before the Fourier parameterization: Adam lr 0.1 on the pixels, open-set L2 weight 1
    "pixels": {"parameterization": "pixels", "lr": 0.1, "embedding_weight": 1.0},
}


def parse_variant(text: str) -> tuple[str, dict]:
    """``lambda0`` (a name from VARIANTS) or ``name:key=value,...`` with InversionConfig fields (YAML values)."""
    if ":" not in text:
        if text not in VARIANTS:
            raise SystemExit(f"unknown variant {text!r}; known: {', '.join(VARIANTS)} (or name:key=value,...)")
        return text, VARIANTS[text]
    name, _, settings = text.partition(":")
    defaults = InversionConfig()
    values = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"variant {name}: unknown setting {key!r}; known: {', '.join(defaults.to_dict())}")
        expected = type(getattr(defaults, key))
        parsed = yaml.safe_load(value)
        if expected is float and type(parsed) is int:
            parsed = float(parsed)
        if type(parsed) is not expected:
            raise SystemExit(f"variant {name}: {key} expects a {expected.__name__}, got {value!r}")
        values[key] = parsed
    try:
        InversionConfig(**values).validate()
    except ValueError as error:
        raise SystemExit(f"variant {name}: {error}") from None
    return name, values


def batched(invert_fn, targets, batch: int, starts: int):
    per = max(1, batch // starts)
    return torch.cat([invert_fn(targets[i : i + per]) for i in range(0, len(targets), per)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="checkpoint or run folder of the LFW recipe")
    parser.add_argument("--train-list", type=Path, required=True)
    parser.add_argument("--aligned", type=Path, required=True)
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--judge", required=True, help="independent ONNX face model, (x-127.5)/128")
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--min-photos", type=int, default=1, help="close-set: draw the classes among those with at least this many training photos")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--starts", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["lambda0.05", "lambda0"], help="see the module docstring")
    parser.add_argument("--sets", nargs="+", default=["closeset", "openset"], choices=["closeset", "openset"], help="which inversions to run")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/inversion"))
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variants]  # bad variants fail before any work
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args.aligned = args.aligned.resolve()  # images are read by absolute path
    backbone, head, _ = load_for_inversion(args.run, need_head=True)
    backbone = backbone.to(args.device)
    judge, judge_info = load_face_model(args.judge, input_mean=127.5, input_std=128.0)
    judge = SpecAdapter(judge, judge_info.spec)  # it judges faces made in our models' convention
    photos = class_photos(args.train_list, args.aligned)
    eligible = sorted(c for c, paths in photos.items() if len(paths) >= args.min_photos)
    if len(eligible) < args.identities:
        raise SystemExit(f"only {len(eligible)} classes have at least {args.min_photos} training photos; --identities is {args.identities}")
    people = unseen_people(args.lfw / "pairsDevTest.txt", args.aligned)
    classes, chosen = draw_targets(args.seed, eligible, len(people), args.identities)
    people = [people[i] for i in chosen]
    closed_gallery = templates(judge, [photos[c] for c in classes])
    open_gallery = templates(judge, [[judge_photo] for _, judge_photo in people])
    targets = torch.from_numpy(embed_images(backbone, FaceImages([p for p, _ in people], "/", align="none"), device=args.device))
    real = torch.stack([FaceImages([p], "/", align="none")[0][0] for p, _ in people])
    args.out.mkdir(parents=True, exist_ok=True)
    first_hits: dict[str, tuple[str, torch.Tensor]] = {}  # per set: the first variant's name and hits

    def report(set_name: str, name: str, images: torch.Tensor, gallery: torch.Tensor) -> None:
        figures, hits = judge_images(judge, images, gallery, args.out / f"judged_{set_name}_{name}.tsv")
        for key, value in figures.items():
            emit(f"{set_name}_{name}_{key}", value)
        if set_name in first_hits:  # the same images' targets and starts: a paired comparison
            base_name, base = first_hits[set_name]
            emit(f"{set_name}_{name}_vs_{base_name}_gained", int((hits & ~base).sum()))
            emit(f"{set_name}_{name}_vs_{base_name}_lost", int((base & ~hits).sum()))
        else:
            first_hits[set_name] = (name, hits)
        np.save(args.out / f"images_{set_name}_{name}.npy", images.half().numpy())

    for name, settings in variants:
        config = InversionConfig(**{"steps": args.steps, "seed": args.seed, "precision": args.precision, "device": args.device, **settings})
        if "closeset" in args.sets:
            closed = batched(lambda chunk: invert_classes(backbone, head, chunk, config, args.starts)[0], classes, args.batch, args.starts)
            report("closeset", name, closed, closed_gallery)
            save_grid(closed[:8], args.out / f"inversion_closeset_{name}.png")
        if "openset" in args.sets:
            opened = batched(lambda chunk: invert_embeddings(backbone, chunk, config, args.starts)[0], targets, args.batch, args.starts)
            report("openset", name, opened, open_gallery)
            save_grid(torch.cat([real[:8, None], opened[:8]], dim=1), args.out / f"inversion_openset_{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
