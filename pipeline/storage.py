"""Storage: one small layer over fsspec so the rest of the pipeline speaks URLs.

Why this module exists:

* Everything takes a local path, ``file://`` or ``s3://`` URL.  S3 settings come from the
  standard AWS environment variables (``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``/``AWS_REGION``) or an
  explicit ``storage_options`` dict; they are never logged (:func:`redact` scrubs URLs that carry
  user:password).
* S3 has no rename, so "atomic" writes differ per backend: on a local filesystem we write to a
  temporary sibling and ``os.replace`` it (a reader never sees a partial file); on S3 an object
  only appears when its upload completes (s3fs uploads at ``close()``), and an aborted upload
  leaves nothing.  :func:`atomic_writer` hides that difference.
* S3 calls fail transiently; :func:`retry` adds exponential backoff with jitter to every call
  that touches the network.
* s3fs is not fork-safe, so filesystems are created lazily, per process, inside the worker.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import time
import uuid
from typing import Any, Callable, Iterator, TypeVar

import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")

#: suffix marker of local temporary files; anything matching is garbage from an interrupted run
TMP_MARK = ".tmp-"


def is_s3(url: str) -> bool:
    return url.startswith("s3://") or url.startswith("s3a://")


def normalize(url: str) -> str:
    """Canonical form: ``file://`` becomes a plain absolute path; s3a:// becomes s3://."""
    url = str(url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    if url.startswith("s3a://"):
        url = "s3://" + url[len("s3a://"):]
    if not is_s3(url) and "://" not in url:
        url = os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/") if len(url) > 1 and not url.endswith("://") else url


def join(base: str, *parts: str) -> str:
    base = normalize(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def basename(url: str) -> str:
    return normalize(url).rstrip("/").rsplit("/", 1)[-1]


def redact(url: str) -> str:
    """Drop credentials embedded in a URL (``scheme://user:pass@host``) before logging it."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", str(url))


def s3_options(extra: dict | None = None) -> dict:
    """Options for s3fs from the AWS environment, overridden by ``extra``.

    botocore already reads the key/secret/token from the environment; we only translate the
    endpoint and region, which s3fs does not pick up from every botocore version by itself.
    """
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    for k, v in (extra or {}).items():
        if k == "client_kwargs":
            opts.setdefault("client_kwargs", {}).update(v)
        else:
            opts[k] = v
    return opts


def get_fs(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem + path for ``url``; created in the calling process (fork safety)."""
    url = normalize(url)
    if is_s3(url):
        fs = fsspec.filesystem("s3", **s3_options(storage_options))
        return fs, url[len("s3://"):]
    if "://" in url:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return fs, path
    return fsspec.filesystem("file"), url


_TRANSIENT_NAMES = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "ConnectionError", "EndpointConnectionError", "ReadTimeout", "Timeout")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                        ValueError, TypeError, KeyError)):
        return False
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return True  # s3fs maps most ClientErrors to OSError; missing keys are FileNotFoundError
    return any(n in text for n in _TRANSIENT_NAMES)


def retry(fn: Callable[[], T], *, attempts: int = 5, base_delay: float = 0.2, what: str = "") -> T:
    """Run ``fn`` with exponential backoff on transient storage errors.

    Missing files and programming errors are raised immediately: retrying them only hides bugs.
    """
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if i == attempts - 1 or not _is_transient(exc):
                raise
            delay = base_delay * (2 ** i) * (1 + random.random())
            log.warning("storage: %s failed (%s: %s); retry %d/%d in %.1fs",
                        redact(what), type(exc).__name__, redact(str(exc))[:200], i + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_bytes(url: str, storage_options: dict | None = None, *, offset: int | None = None,
               size: int | None = None) -> bytes:
    """Whole file (or a byte range, used for members of source tars)."""
    fs, path = get_fs(url, storage_options)

    def _read() -> bytes:
        if offset is None:
            return fs.cat_file(path)
        return fs.cat_file(path, start=offset, end=offset + (size or 0))

    return retry(_read, what=f"read {url}")


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = get_fs(url, storage_options)
    return bool(retry(lambda: fs.exists(path), what=f"exists {url}"))


def size(url: str, storage_options: dict | None = None) -> int | None:
    fs, path = get_fs(url, storage_options)
    try:
        return int(retry(lambda: fs.size(path), what=f"size {url}"))
    except FileNotFoundError:
        return None


def listdir(url: str, storage_options: dict | None = None) -> list[str]:
    """Names (not paths) directly under ``url``; empty when it does not exist."""
    fs, path = get_fs(url, storage_options)
    if is_s3(normalize(url)):
        fs.invalidate_cache(path)  # s3fs caches listings; another worker may have written since
    try:
        entries = retry(lambda: fs.ls(path, detail=False), what=f"ls {url}")
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def remove(url: str, storage_options: dict | None = None) -> None:
    fs, path = get_fs(url, storage_options)
    with contextlib.suppress(FileNotFoundError):
        retry(lambda: fs.rm_file(path), what=f"rm {url}")


def makedirs(url: str, storage_options: dict | None = None) -> None:
    """Create a local folder; a no-op on S3 (no real directories there)."""
    url = normalize(url)
    if not is_s3(url):
        fs, path = get_fs(url, storage_options)
        fs.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_writer(url: str, storage_options: dict | None = None) -> Iterator[Any]:
    """Binary file object whose content becomes visible at ``url`` only if the block succeeds.

    Local: write ``<name>.tmp-<uuid>`` then ``os.replace`` (atomic on POSIX).  S3: the object is
    created when the upload completes at ``close()``; on error the multipart upload is aborted
    (``discard``), so nothing becomes visible.  The caller owns the file object for the duration
    of the block — we open and close it ourselves because webdataset's ``TarWriter`` never closes
    a file object it did not open (which on s3fs would mean nothing is uploaded).
    """
    url = normalize(url)
    fs, path = get_fs(url, storage_options)
    if is_s3(url):
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()
            raise
        retry(f.close, attempts=3, what=f"upload {url}")
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    f = open(tmp, "wb")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Atomically write a small file (stats, manifest), retrying the whole write on S3 errors."""

    def _write() -> None:
        with atomic_writer(url, storage_options) as f:
            f.write(data)

    retry(_write, attempts=4, what=f"write {url}")


def remove_stale_tmp(folder: str, storage_options: dict | None = None) -> int:
    """Delete ``*.tmp-*`` leftovers of an interrupted local run; returns how many were removed."""
    n = 0
    for name in listdir(folder, storage_options):
        if TMP_MARK in name:
            remove(join(folder, name), storage_options)
            n += 1
    return n


# ---------------------------------------------------------------- webdataset integration
_READ_OPTIONS: dict = {}


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """webdataset gopen handler for ``s3://``; the filesystem is made in the reading process."""
    fs, path = get_fs(url, _READ_OPTIONS or None)
    return retry(lambda: fs.open(path, mode, block_size=8 * 1024 * 1024), what=f"open {url}")


def register_webdataset_s3(storage_options: dict | None = None) -> None:
    """webdataset 1.0.2 ships no ``s3://`` opener; plug ours (fsspec/s3fs) in. Idempotent.

    ``storage_options`` (if given) apply to every s3:// read in this process afterwards.
    """
    import importlib

    wg = importlib.import_module("webdataset.gopen")  # the package re-exports a *function* `gopen`
    if storage_options:
        _READ_OPTIONS.clear()
        _READ_OPTIONS.update(storage_options)
    wg.gopen_schemes["s3"] = _gopen_s3
    wg.gopen_schemes["s3a"] = _gopen_s3
