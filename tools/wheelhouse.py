"""An offline bundle for a GPU node: every wheel pairforge needs *beside* the node's own torch.

    python tools/wheelhouse.py OUT [--without ray] [--report-only]      (or: make wheelhouse)

GPU nodes are often behind an air gap, with a fixed CUDA/torch stack that must not be replaced.
This resolves pairforge's dependencies with this machine's pip (same OS, CPU architecture and
Python as the node: build it there or on a twin), drops torch, torchvision and everything only
they pull in (CUDA runtime wheels, triton), downloads the rest as wheels, builds a wheel for any
dependency published only as a source archive (DeepSpeed: a pure-Python wheel, ``DS_BUILD_OPS=0``,
its CUDA ops are JIT-built on the node when used) and for pairforge itself, and prints a size
table. On the node, with its torch and torchvision installed:

    pip install --no-index --find-links OUT pairforge

``--without NAME`` leaves an optional heavy distribution out (``ray``: the synth factory; a node
that only trains does not need it). pairforge's metadata still names it, so such a bundle is
installed wheel by wheel: ``pip install --no-index --no-deps OUT/*.whl`` (docs/clusters.md).
Nothing here contacts anything but the package index pip is set up for.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what the node brings itself: torch, torchvision, and what only they require
NODE_OWN = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(project_wheel: Path, workdir: Path) -> list[dict]:
    """pip's own resolution of the project wheel in a clean install (``--dry-run --report``)."""
    report = workdir / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                    "--report", str(report), str(project_wheel)], check=True)
    return json.loads(report.read_text())["install"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to fill with wheels")
    ap.add_argument("--without", action="append", default=[], metavar="NAME",
                    help="leave out an optional distribution (e.g. ray); repeatable")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    without = {_normal(n) for n in args.without}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                       check=True)
        project = max(out.glob("pairforge-*.whl"), key=lambda p: p.stat().st_mtime)
        items = [i for i in resolve(project, tmp) if _normal(i["metadata"]["name"]) != "pairforge"]
        keep = [i for i in items if not NODE_OWN.match(_normal(i["metadata"]["name"]))
                and _normal(i["metadata"]["name"]) not in without]
        pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in keep]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp / "dl"),
                        *pins], check=True)
        for f in sorted((tmp / "dl").iterdir()):
            if f.suffix == ".whl":
                shutil.move(str(f), out / f.name)
            else:  # a source archive only: build its wheel here, against this environment's torch
                env = {**os.environ, "DS_BUILD_OPS": "0"}
                subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                                "-w", str(out), str(f)], check=True, env=env)
    left = sorted({i["metadata"]["name"] for i in items} - {i["metadata"]["name"] for i in keep})
    wheels = sorted(out.glob("*.whl"), key=lambda p: -p.stat().st_size)
    total = sum(p.stat().st_size for p in wheels)
    print("| wheel | MB |\n|---|---|")
    for p in wheels:
        print(f"| {p.name} | {p.stat().st_size / 1e6:.1f} |")
    print(f"| **{len(wheels)} wheels** | **{total / 1e6:.0f}** |")
    print(f"left to the node: {', '.join(left)}", file=sys.stderr)
    how = f"--no-deps {out}/*.whl" if without else f"--find-links {out} pairforge"
    print(f"install on the node (its torch and torchvision already there): pip install --no-index {how}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
