"""Training recipes shipped with the package (also reachable as ``configs/`` in the repository)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["recipe_path", "list_recipes"]

_HERE = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of a shipped recipe, by name (``"smoke"``) or as a path that exists."""
    if Path(name).is_file():
        return Path(name)
    path = _HERE / f"{Path(name).stem}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; shipped: {', '.join(list_recipes())}")
    return path
