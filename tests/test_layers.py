"""The library's layers import only downward (docs/DESIGN.md, "Layers").

Every ``import`` and ``from ... import`` in ``src/arcface`` (function-level ones included) is resolved to
the package it reaches; a package may import its own modules and those of lower layers, never a higher
layer or another package of its own layer. The top-level ``arcface/__init__.py`` is the public facade
and may re-export from any layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "arcface"

# Bottom first. A new package must be given a layer here (and in docs/DESIGN.md).
LAYERS: list[set[str]] = [
    {"registry", "runtime", "input_spec", "configs"},
    {"data"},
    {"home"},
    {"backbones", "heads", "pretrained"},
    {"model"},
    {"eval", "export"},
    {"train"},
    {"clean", "invert", "recognizer", "recipes"},
    {"commands"},
    {"cli", "__main__"},
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _package(module: str) -> str | None:
    """``arcface.eval.embed`` -> ``eval``; None for modules outside the library (torch, numpy, ...)."""
    parts = module.split(".")
    if parts[0] != "arcface":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, source: Path = SOURCE) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, a file of the package folder ``source``."""
    relative = path.relative_to(source.parent).with_suffix("")
    own = list(relative.parts)
    if own[-1] == "__init__":
        own = own[:-1]
    package_parts = own if path.name == "__init__.py" else own[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from . import presets`` names submodules: each alias that is a module of its own counts as one.
            folder = source.parent.joinpath(*base.split("."))
            for alias in node.names:
                submodule = (folder / alias.name).is_dir() or (folder / f"{alias.name}.py").is_file()
                found.append((node.lineno, f"{base}.{alias.name}" if submodule else base))
    return found


def layer_violations(source: Path = SOURCE) -> list[str]:
    problems = []
    for path in sorted(source.rglob("*.py")):
        package = _package(".".join(path.relative_to(source.parent).with_suffix("").parts))
        if package == "__init__":
            continue  # the facade
        if package not in RANK:
            problems.append(f"{path.relative_to(source)}: package {package!r} has no layer in tests/test_layers.py")
            continue
        for line, module in _imports(path, source):
            if module.split(".")[0] in ("benchmarks", "tests"):
                problems.append(f"{path.relative_to(source)}:{line}: the library imports {module}")
            target = _package(module)
            if target is None or target == package or target == "__init__":
                continue
            if target not in RANK:
                problems.append(f"{path.relative_to(source)}:{line}: imports {module}, whose package has no layer")
            elif RANK[target] >= RANK[package]:
                problems.append(f"{path.relative_to(source)}:{line}: {package} (layer {RANK[package]}) imports {module} "
                                f"(layer {RANK[target]}); layers import only downward")
    return problems


def test_the_library_imports_only_downward():
    assert layer_violations() == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    """A copy of the library with one upward import planted (evaluation reaching into training) fails."""
    copy = tmp_path / "arcface"
    for path in SOURCE.rglob("*.py"):
        target = copy / path.relative_to(SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert layer_violations(copy) == []
    planted = copy / "eval" / "embed.py"
    planted.write_text(planted.read_text(encoding="utf-8") + "\n\ndef _late():\n    from ..train.config import TrainConfig\n", encoding="utf-8")
    (copy / "heads" / "extra.py").write_text("import arcface.commands.eval\n", encoding="utf-8")
    (copy / "newthing").mkdir()
    (copy / "newthing" / "__init__.py").write_text("", encoding="utf-8")
    problems = layer_violations(copy)
    assert any(p.startswith("eval/embed.py:") and "arcface.train.config" in p for p in problems), problems
    assert any(p.startswith("heads/extra.py:1:") and "arcface.commands.eval" in p for p in problems), problems
    assert any("'newthing' has no layer" in p for p in problems), problems


@pytest.mark.parametrize("source, expected", [
    ("from ..train.config import X", "arcface.train.config"),
    ("from . import presets", "arcface.heads.presets"),
    ("from .margin import m", "arcface.heads.margin"),
    ("import arcface.data.align", "arcface.data.align"),
])
def test_relative_imports_resolve_to_absolute_modules(tmp_path, source, expected):
    path = tmp_path / "arcface" / "heads" / "module.py"
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    (path.parent / "presets.py").write_text("")
    assert _imports(path, tmp_path / "arcface") == [(1, expected)]
