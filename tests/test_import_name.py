"""pairforge imports as ``pairforge.*`` only: a user's own ``degradations/``, ``pipeline/``,
``training/`` or ``clusters/`` package in the working directory must never shadow ours.

The repository keeps those four packages as top-level folders, mapped under ``pairforge`` by the
build (pyproject ``package-dir``).  These tests run real subprocesses (``python -c``, the
``pairforge`` console script, and the Ray workers ``synth`` starts) from a folder that holds
decoy packages of those names, first on ``sys.path``; each decoy raises ``ImportError`` naming
itself when imported, so any import of a bare top-level name fails loudly.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DECOYS = ("degradations", "pipeline", "training", "clusters")
SHADOW_MARK = "shadowed by the package in the working directory"
#: generous: a subprocess that hangs must fail the test, not the suite
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A working directory holding the user's own packages named like pairforge's folders."""
    work = tmp_path / "user_project"
    for name in DECOYS:
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"raise ImportError({SHADOW_MARK!r} + ': ' + __file__)\n")
    return work


def _env(cwd: Path) -> dict[str, str]:
    """The environment of a user who put their project first on ``sys.path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH", "")) if p)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", code], cwd)


def _pairforge(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``pairforge`` console script (beside this interpreter) with ``args``."""
    script = Path(sys.executable).parent / "pairforge"
    assert script.exists(), f"no pairforge console script next to {sys.executable}; is the project installed?"
    return _run([str(script), *args], cwd)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


_IMPORT_CHECK = """
import json, sys
from pairforge.degradations import Degrader, load_preset, replay
from pairforge.pipeline import read_pairs
import pairforge.clusters.cli, pairforge.degradations, pairforge.pipeline, pairforge.training
print(json.dumps({
    "files": {m: sys.modules[m].__file__ for m in
              ("pairforge.degradations", "pairforge.pipeline", "pairforge.training", "pairforge.clusters")},
    "objects": [Degrader.__module__, load_preset.__module__, replay.__module__, read_pairs.__module__],
    "bare": sorted(m for m in sys.modules if m.split(".")[0] in %r),
    "path0": sys.path[:3],
}))
""" % (DECOYS,)


def test_decoys_really_shadow_bare_names(user_dir):
    """The fixture works: from that folder, a bare ``import <name>`` finds the user's package."""
    for name in DECOYS:
        proc = _python(f"import {name}", user_dir)
        assert proc.returncode != 0, f"`import {name}` did not reach the decoy: {_explain(proc)}"
        last = proc.stderr.strip().splitlines()[-1]
        assert last == f"ImportError: {SHADOW_MARK}: {user_dir / name / '__init__.py'}", _explain(proc)


def test_pairforge_imports_are_the_installed_ones(user_dir):
    proc = _python(_IMPORT_CHECK, user_dir)
    assert proc.returncode == 0, _explain(proc)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(user_dir) in found["path0"], found  # the user's folder really came first
    for module, path in found["files"].items():
        installed = Path(importlib.import_module(module).__file__).resolve()  # the repo folder, when editable
        assert Path(path).resolve() == installed, (module, path)
        assert not installed.is_relative_to(user_dir)
    assert all(m.startswith(("pairforge.degradations", "pairforge.pipeline")) for m in found["objects"]), found
    assert found["bare"] == [], f"bare top-level modules were imported: {found['bare']}"


def test_cli_synth_inspect_verify_and_read_from_a_shadowing_folder(user_dir):
    """The console script, and the Ray workers it starts, run from the user's folder."""
    synth = _pairforge(["synth", "--source", "bundled", "--out", "out", "--patch-size", "64",
                        "--patches-per-image", "1", "--images-per-shard", "3", "--workers", "1",
                        "--no-progress"], user_dir)
    assert synth.returncode == 0, _explain(synth)
    assert SHADOW_MARK not in synth.stderr
    url = synth.stdout.strip().splitlines()[-1]  # synth prints the dataset URL last
    dataset = Path(url)
    assert dataset.parent == user_dir / "out" and (dataset / "manifest.json").is_file(), _explain(synth)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 6 and manifest["totals"]["shards"] == 2
    assert all((dataset / s["name"]).stat().st_size == s["bytes"] for s in manifest["shards"])

    inspect = _pairforge(["inspect", url, "--out", "inspect-out", "--samples", "2"], user_dir)
    assert inspect.returncode == 0, _explain(inspect)
    assert manifest["dataset_id"] in inspect.stdout
    assert (user_dir / "inspect-out" / "contact_sheet.png").is_file()

    verify = _pairforge(["inspect", "--verify", "--no-progress", url], user_dir)
    assert verify.returncode == 0, _explain(verify)
    assert "verified 2 shards" in verify.stdout

    read = _python(f"from pairforge.pipeline import read_pairs; print(sum(1 for _ in read_pairs({url!r})))",
                   user_dir)
    assert read.returncode == 0 and read.stdout.strip() == "6", _explain(read)
