"""Who may import whom, read from the source (docs/architecture.md draws the same picture).

Layers, bottom up: ``degradations`` ← ``pipeline`` ← ``training`` ← ``clusters``; inside
``training`` three rooms: ``model`` (a trained model in use) and ``runtime`` (starting and
watching ranks) import nothing from each other or from ``loop``, which uses both.  Command
modules import no other command module and never re-enter the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"degradations": 0, "pipeline": 1, "training": 2, "clusters": 3}
ROOMS = {"model": {"model"}, "runtime": {"runtime"}, "loop": {"loop", "model", "runtime"}}


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute names; relative ones resolved), at any depth."""
    parts = path.relative_to(REPO).with_suffix("").parts
    package = ["pairforge", *parts[:-1]] if parts[-1] != "__init__" else ["pairforge", *parts[:-1]]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.append(mod)
            names += [f"{mod}.{a.name}" for a in node.names]  # `from pkg import module`
    return names


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if ".venv" not in p.parts)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = []
    for path in _sources(package):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "pairforge" and len(parts) > 1 and parts[1] in PACKAGES:
                if PACKAGES[parts[1]] > PACKAGES[package]:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_training_room_imports_only_what_it_may(room):
    wrong = []
    for path in _sources(f"training/{room}"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] == ["pairforge", "training"] and len(parts) > 2 and parts[2] in ROOMS:
                if parts[2] not in ROOMS[room]:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_command_imports_another_or_reenters_the_cli():
    wrong = []
    for path in _sources("clusters/commands"):
        for name in _imports(path):
            if name.startswith("pairforge.clusters.cli") or (
                    name.startswith("pairforge.clusters.commands.") and name.split(".")[3] != path.stem):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)
