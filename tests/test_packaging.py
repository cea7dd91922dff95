"""The wheel holds every package: pyproject lists packages by hand (folders map under ``pairforge``).

An editable install finds a package missing from that list anyway, so only a regular install
(a user's ``pip install pairforge``) would fail; this test catches it here.
"""
from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, package_dir = set(cfg["packages"]), cfg["package-dir"]
    found = set()
    for name, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join((name, *rel.parts)) if rel.parts else name)
    assert found - listed == set(), f"packages missing from pyproject [tool.setuptools] packages: {sorted(found - listed)}"
