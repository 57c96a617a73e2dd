"""More verification pairs of LFW people never seen in training, for evaluations that 1,000 pairs cannot resolve.

``pairsDevTest.txt`` holds 500 matched + 500 mismatched pairs of the View 1 test people: one accuracy on it
has a standard error of about 1.1 points, too coarse for differences of a few points (the cleaning
benchmark's gap of about 4.7). This draws ``--count`` matched and ``--count`` mismatched pairs from the
same people (``peopleDevTest.txt``: disjoint from every View 1 training person), none of them a pair of
``pairsDevTest.txt``, and writes them in the View 1 format (header N, N matched lines, N mismatched
lines), so ``arcface eval --pairs`` and the training's ``eval.pairs`` read them as they are.

Matched pairs: a person drawn uniformly among those with at least two images, then two distinct images
(so a few people with many images do not dominate). Mismatched: two distinct people drawn uniformly, one
image each. No pair twice. Deterministic for a seed::

    .venv/bin/python benchmarks/heldout_pairs.py --lfw ../shared/data/lfw_deepfunneled --count 3000 \\
        --out runs/cache/heldout_pairs.txt
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

__all__ = ["read_people", "sample_pairs", "write_view1_pairs"]

Matched = tuple[str, int, int]
Mismatched = tuple[str, int, str, int]


def read_people(path: Path) -> dict[str, int]:
    """name -> image count from an LFW people file (header line, then ``name<TAB>count`` lines)."""
    rows = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    return {name: int(count) for name, count in rows}


def _pair_key(pair: tuple) -> tuple:
    """Order-free identity of a pair (a, 1, b, 2 is the same pair as b, 2, a, 1)."""
    if len(pair) == 3:
        name, first, second = pair
        return (name, min(first, second), name, max(first, second))
    first = (pair[0], pair[1])
    second = (pair[2], pair[3])
    return (*min(first, second), *max(first, second))


def read_lfw_pair_keys(path: Path) -> set[tuple]:
    """The order-free keys of every pair in an LFW pairs file (any header)."""
    keys = set()
    for line in path.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 3:
            keys.add(_pair_key((fields[0], int(fields[1]), int(fields[2]))))
        elif len(fields) == 4:
            keys.add(_pair_key((fields[0], int(fields[1]), fields[2], int(fields[3]))))
    return keys


def sample_pairs(people: dict[str, int], count: int, exclude: set[tuple], seed: int) -> tuple[list[Matched], list[Mismatched]]:
    """``count`` matched and ``count`` mismatched pairs of ``people``, none in ``exclude``, no pair twice.

    Image numbers are 1-based, as in LFW. Raises ValueError when the people cannot give that many.
    """
    rng = random.Random(seed)
    names = sorted(people)
    several = [name for name in names if people[name] >= 2]
    excluded_matched = sum(1 for key in exclude if key[0] == key[2] and key[0] in people)
    available = sum(people[name] * (people[name] - 1) // 2 for name in several) - excluded_matched
    if len(names) < 2 or available < count:
        raise ValueError(f"{len(several)} people with 2+ images cannot give {count} distinct matched pairs")
    seen = set(exclude)
    matched: list[Matched] = []
    while len(matched) < count:
        name = rng.choice(several)
        first, second = sorted(rng.sample(range(1, people[name] + 1), 2))
        key = _pair_key((name, first, second))
        if key not in seen:
            seen.add(key)
            matched.append((name, first, second))
    mismatched: list[Mismatched] = []
    while len(mismatched) < count:
        first, second = rng.sample(names, 2)
        pair = (first, rng.randint(1, people[first]), second, rng.randint(1, people[second]))
        key = _pair_key(pair)
        if key not in seen:
            seen.add(key)
            mismatched.append(pair)
    return matched, mismatched


def write_view1_pairs(path: Path, matched: list[Matched], mismatched: list[Mismatched]) -> None:
    """The View 1 layout: ``N``, then N matched lines, then N mismatched lines (tab-separated)."""
    if len(matched) != len(mismatched):
        raise ValueError(f"View 1 needs as many matched as mismatched pairs, got {len(matched)} and {len(mismatched)}")
    lines = [str(len(matched))] + ["\t".join(map(str, pair)) for pair in matched] + ["\t".join(map(str, pair)) for pair in mismatched]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder (peopleDevTest.txt, pairsDevTest.txt)")
    parser.add_argument("--count", type=int, default=3000, help="matched pairs, and as many mismatched")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for name in ("peopleDevTest.txt", "pairsDevTest.txt"):
        if not (args.lfw / name).is_file():
            parser.error(f"{args.lfw / name}: not found (give the LFW folder with its View 1 files)")
    people = read_people(args.lfw / "peopleDevTest.txt")
    try:
        matched, mismatched = sample_pairs(people, args.count, read_lfw_pair_keys(args.lfw / "pairsDevTest.txt"), args.seed)
    except ValueError as error:
        parser.error(str(error))
    write_view1_pairs(args.out, matched, mismatched)
    print(f"heldout_pairs={2 * args.count}")
    print(f"heldout_people_in_pairs={len({p[0] for p in matched} | {p[0] for p in mismatched} | {p[2] for p in mismatched})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
