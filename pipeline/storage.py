"""Storage: one small layer over fsspec so the rest of the pipeline speaks URLs.

Why this module exists:

* Everything takes a local path, ``file://`` or ``s3://`` URL.  S3 settings come from the
  standard AWS environment variables (``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``/``AWS_REGION``) or an
  explicit ``storage_options`` dict; they are never logged (:func:`redact` scrubs URLs that carry
  user:password).
* A write is done only when the store says so.  S3 has no rename, so "atomic" differs per
  backend: locally we write a temporary sibling, fsync and ``os.replace`` it; on S3
  :func:`atomic_writer` spools the content to a local temporary file, then uploads it (one PUT,
  or a multipart upload for large objects) and confirms it with a HEAD that must report the
  expected size.  A failed attempt is aborted and the *data is sent again* from the spool: an
  fsspec file marks itself closed even when its upload failed, so "retrying close()" would
  report success for an object that was never stored.
* Every network call is bounded.  :class:`StorageConfig` holds, in one place, the client's
  connect/read timeouts and our retry policy: at most ``attempts`` tries per object, no new try
  after ``deadline_s``, exponential backoff with jitter in between (throttling — ``SlowDown``,
  503 — included).  botocore's and s3fs's own retries are kept low (they would multiply every
  wait); :func:`retry` owns the deadline.  A dead or silent endpoint therefore fails a job in
  minutes; what ends it is a :class:`StorageError` that names the object and the last error.
* s3fs is not fork-safe, so filesystems are created lazily, per process, inside the worker.

Defaults, and the environment variables that override them (tests shorten them):

* ``connect_timeout`` (``PAIRFORGE_S3_CONNECT_TIMEOUT``, 10 s): a TCP connect takes
  milliseconds; 10 s rides out a loaded load balancer.
* ``read_timeout`` (``PAIRFORGE_S3_READ_TIMEOUT``, 60 s): the longest silence accepted while
  waiting for the server (botocore's own default; S3 keeps slow responses alive).
* ``client_attempts`` (``PAIRFORGE_S3_CLIENT_ATTEMPTS``, 2): s3fs's tries inside one call, one
  quick retry that also covers streamed reads; botocore's own retries are off.
* ``attempts`` (``PAIRFORGE_S3_ATTEMPTS``, 8): our tries per object.
* ``deadline_s`` (``PAIRFORGE_S3_DEADLINE``, 180 s): no new try starts later.
* ``backoff_base_s`` / ``backoff_max_s`` (``PAIRFORGE_S3_BACKOFF_BASE`` 0.5 s /
  ``PAIRFORGE_S3_BACKOFF_MAX`` 20 s): the first wait, doubled per try up to the cap, each
  jittered to 50-100 % so workers throttled together do not retry together.
* ``upload_floor_mb_s`` (``PAIRFORGE_S3_UPLOAD_FLOOR``, 1 MB/s): one upload try is cut after
  ``client_attempts x (connect + read timeout + size / floor)`` (140 s for a small object,
  240 s for a 50 MB shard).  aiohttp has no timeout while it waits for ``100 Continue`` or
  writes a request body, so without this cut a server that reads a request and never answers
  would hold an upload forever.

What that bounds: a refused connection fails an object after 8 tries, within a minute of
backoff; an endpoint that accepts connections and never answers fails it within the deadline
plus one try (5 to 7 minutes).  Together with the executor's stop after two storage failures
in a row, a dead or silent store ends a job in minutes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import IO, Any, Callable, Iterator, TypeVar

import fsspec
import fsspec.asyn
from fsspec.exceptions import FSTimeoutError

from pairforge.errors import UsageError, WorkFailed
from pairforge.retry import RetryPolicy, retry_call

log = logging.getLogger(__name__)
T = TypeVar("T")

#: suffix marker of local temporary files; anything matching is garbage from an interrupted run
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class StorageConfig:
    """Timeouts and retry policy of every storage call (see the module docstring for the why).

    Resolve it once with :meth:`from_env` and pass it along (a job hands the driver's config to
    its workers), so a remote worker follows the same policy as the process that planned it.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    client_attempts: int = 2
    attempts: int = 8
    deadline_s: float = 180.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    upload_floor_mb_s: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise StorageConfigError(f"storage config: {f.name} must be > 0, not {getattr(self, f.name)!r}")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "StorageConfig":
        """Defaults overridden by ``PAIRFORGE_S3_*`` variables (a bad value names its variable)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_VARS[f.name]
            if env.get(var, "").strip():
                kind = int if f.type in (int, "int") else float
                try:
                    values[f.name] = kind(env[var])
                except ValueError:
                    raise StorageConfigError(f"{var}={env[var]!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based): exponential, capped,
        jittered to 50-100 % so that workers throttled together do not retry together."""
        return self.retry_policy().delay(attempt)

    def retry_policy(self, attempts: int | None = None) -> RetryPolicy:
        """This config's tries, deadline and backoff (``attempts`` overrides the tries)."""
        return RetryPolicy(attempts or self.attempts, self.deadline_s, self.backoff_base_s, self.backoff_max_s)

    def upload_try_limit(self, nbytes: int) -> float:
        """Seconds one upload try may take: connect, wait and send at ``upload_floor_mb_s``, for
        each of the client's own attempts.  Slower than that counts as stalled."""
        return self.client_attempts * (self.connect_timeout + self.read_timeout
                                       + nbytes / (self.upload_floor_mb_s * 1e6))

    def botocore_kwargs(self) -> dict:
        """``config_kwargs`` for s3fs: our timeouts, and no botocore retries (we own them)."""
        return {"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                "retries": {"total_max_attempts": 1, "mode": "standard"}}


#: the environment variable that overrides each :class:`StorageConfig` field
ENV_VARS = {
    "connect_timeout": "PAIRFORGE_S3_CONNECT_TIMEOUT",
    "read_timeout": "PAIRFORGE_S3_READ_TIMEOUT",
    "client_attempts": "PAIRFORGE_S3_CLIENT_ATTEMPTS",
    "attempts": "PAIRFORGE_S3_ATTEMPTS",
    "deadline_s": "PAIRFORGE_S3_DEADLINE",
    "backoff_base_s": "PAIRFORGE_S3_BACKOFF_BASE",
    "backoff_max_s": "PAIRFORGE_S3_BACKOFF_MAX",
    "upload_floor_mb_s": "PAIRFORGE_S3_UPLOAD_FLOOR",
}


class StorageError(WorkFailed, OSError):
    """A storage operation that still failed when its attempts or deadline ran out.

    The message names the operation, the (redacted) URL and the last error; a job that meets one
    stops with a non-zero exit instead of retrying a store that is down.
    """


class StorageSetupError(UsageError, StorageError):
    """The client cannot make a request at all (no credentials, no region): the user must act."""


class StorageConfigError(UsageError, ValueError):
    """A storage setting or URL that cannot work: a PAIRFORGE_S3_* value, a bucket name S3 cannot have."""


class UploadNotConfirmed(OSError):
    """The store did not report an object we just uploaded, or reported another size (retried)."""


def _config(config: StorageConfig | None) -> StorageConfig:
    return config if config is not None else StorageConfig.from_env()


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


def s3_options(extra: dict | None = None, config: StorageConfig | None = None) -> dict:
    """Options for s3fs from the AWS environment and ``config``'s timeouts, overridden by ``extra``.

    botocore already reads the key/secret/token from the environment; we only translate the
    endpoint and region, which s3fs does not pick up from every botocore version by itself.
    """
    opts: dict[str, Any] = {"config_kwargs": _config(config).botocore_kwargs()}
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
        if k in ("client_kwargs", "config_kwargs"):
            opts.setdefault(k, {}).update(v)
        else:
            opts[k] = v
    return opts


def get_fs(url: str, storage_options: dict | None = None, *,
           config: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem + path for ``url``; created in the calling process (fork safety)."""
    url = normalize(url)
    if is_s3(url):
        cfg = _config(config)
        fs = fsspec.filesystem("s3", **s3_options(storage_options, cfg))
        fs.retries = cfg.client_attempts  # s3fs's own loop; a class attribute, not a constructor option
        return fs, url[len("s3://"):]
    if "://" in url:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return fs, path
    return fsspec.filesystem("file"), url


_TRANSIENT_NAMES = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "ConnectionError", "EndpointConnectionError", "ReadTimeout", "Timeout")


#: botocore's base class of every error below HTTP (refused, reset or closed connections, timeouts);
#: matched by name so this module does not import botocore for local paths
_NETWORK_BASES = ("HTTPClientError",)


#: botocore's errors for a client that cannot even sign a request: no retry helps, the user must act
_SETUP_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "NoRegionError", "CredentialRetrievalError",
                 "ProfileNotFound", "InvalidConfigError")
CREDENTIALS_HINT = ("S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for "
                    "a non-AWS store), ~/.aws/credentials or an instance role")


def _is_transient(exc: BaseException) -> bool:
    """Worth another try: network errors and throttling; not missing keys, denied access or bugs.

    botocore's network errors are not ``OSError``s, and one of them has a name none of
    :data:`_TRANSIENT_NAMES` matches: ``ConnectionClosedError``, what a server that goes away
    in the middle of a request (a restart) gives.  They all derive from ``HTTPClientError``.
    """
    if isinstance(exc, (StorageError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                        PermissionError, ValueError, TypeError, KeyError)):
        return False
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(c.__name__ in _NETWORK_BASES for c in type(exc).__mro__):
        return True
    if isinstance(exc, OSError):
        return True  # s3fs maps most ClientErrors to OSError; missing keys are FileNotFoundError
    return any(n in text for n in _TRANSIENT_NAMES)


def _describe(exc: BaseException) -> str:
    """``Type: message``, plus the S3 error code (``SlowDown`` …) that s3fs's translation drops."""
    text = f"{type(exc).__name__}: {redact(str(exc))}"
    response = getattr(exc.__cause__, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    if code and code not in text:
        text += f" ({code})"
    return text[:300]


def retry(fn: Callable[[], T], *, what: str = "", config: StorageConfig | None = None,
          attempts: int | None = None) -> T:
    """Run ``fn`` (one operation on one object) under ``config``'s attempts, deadline and backoff.

    Missing files and programming errors are raised at once: retrying them only hides bugs.
    When the attempts or the deadline run out, raises :class:`StorageError` naming ``what``
    (the operation and its URL) and the last error.  No try starts after the deadline; a
    running one is bounded by the client's timeouts (and, for uploads, by
    :meth:`StorageConfig.upload_try_limit`).
    """
    policy = _config(config).retry_policy(attempts)

    def give_up(exc: Exception, tries: int, elapsed: float) -> StorageError:
        return StorageError(f"{redact(what)}: gave up after {tries} attempt(s) in {elapsed:.1f}s; "
                            f"last error: {_describe(exc)}")

    def on_retry(exc: Exception, i: int, delay: float) -> None:
        log.warning("storage: %s failed (%s); retry %d/%d in %.2fs", redact(what), _describe(exc)[:200],
                    i, policy.attempts - 1, delay)

    def named(call: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            try:
                return call()
            except Exception as exc:
                if type(exc).__name__ in _SETUP_ERRORS:
                    raise StorageSetupError(f"{redact(what)}: {_describe(exc)}; {CREDENTIALS_HINT}") from None
                if type(exc).__name__ == "ParamValidationError":  # e.g. a bucket name S3 cannot have
                    raise StorageConfigError(f"{redact(what)}: not a valid S3 URL: "
                                     f"{' '.join(str(exc).split())[:200]}") from None
                raise
        return run

    return retry_call(named(fn), policy, retryable=_is_transient, give_up=give_up, on_retry=on_retry)


def read_bytes(url: str, storage_options: dict | None = None, *, offset: int | None = None,
               size: int | None = None, config: StorageConfig | None = None) -> bytes:
    """Whole file (or a byte range, used for members of source tars)."""
    fs, path = get_fs(url, storage_options, config=config)

    def _read() -> bytes:
        if offset is None:
            return fs.cat_file(path)
        return fs.cat_file(path, start=offset, end=offset + (size or 0))

    return retry(_read, what=f"read {url}", config=config)


def exists(url: str, storage_options: dict | None = None, *, config: StorageConfig | None = None) -> bool:
    fs, path = get_fs(url, storage_options, config=config)
    return bool(retry(lambda: fs.exists(path), what=f"exists {url}", config=config))


def size(url: str, storage_options: dict | None = None, *, config: StorageConfig | None = None) -> int | None:
    """Size the store reports for ``url`` now (a HEAD on S3, past any cached listing); None if absent."""
    fs, path = get_fs(url, storage_options, config=config)
    fs.invalidate_cache(path)
    try:
        return int(retry(lambda: fs.size(path), what=f"size {url}", config=config))
    except FileNotFoundError:
        return None


def sizes(urls: list[str], storage_options: dict | None = None, *, config: StorageConfig | None = None,
          threads: int = 8) -> dict[str, int | None]:
    """:func:`size` of many objects, ``threads`` HEADs at a time (a manifest may list thousands)."""
    with ThreadPoolExecutor(max(1, min(threads, len(urls)))) as pool:
        found = pool.map(lambda u: size(u, storage_options, config=config), urls)
        return dict(zip(urls, found))


def listdir(url: str, storage_options: dict | None = None, *, config: StorageConfig | None = None) -> list[str]:
    """Names (not paths) directly under ``url``; empty when it does not exist."""
    fs, path = get_fs(url, storage_options, config=config)
    if is_s3(normalize(url)):
        fs.invalidate_cache(path)  # s3fs caches listings; another worker may have written since
    try:
        entries = retry(lambda: fs.ls(path, detail=False), what=f"ls {url}", config=config)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def remove(url: str, storage_options: dict | None = None, *, config: StorageConfig | None = None) -> None:
    fs, path = get_fs(url, storage_options, config=config)
    with contextlib.suppress(FileNotFoundError):
        retry(lambda: fs.rm_file(path), what=f"rm {url}", config=config)


def makedirs(url: str, storage_options: dict | None = None) -> None:
    """Create a local folder; a no-op on S3 (no real directories there)."""
    url = normalize(url)
    if not is_s3(url):
        fs, path = get_fs(url, storage_options)
        fs.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_writer(url: str, storage_options: dict | None = None, *,
                  config: StorageConfig | None = None) -> Iterator[IO[bytes]]:
    """Binary file whose content is stored at ``url`` — and confirmed there — only if the block succeeds.

    Local: write ``<name>.tmp-<uuid>``, fsync, ``os.replace`` (atomic on POSIX), check the size.
    S3: the block writes to a local spool file (``TMPDIR``, deleted afterwards); on exit it is
    uploaded and confirmed by :func:`upload_file`, which re-sends it on every retry.  An
    exception in the block uploads nothing.  When the ``with`` statement returns, the store has
    reported the object with its full size; when that cannot be confirmed within the config's
    attempts and deadline it raises :class:`StorageError`.
    """
    url = normalize(url)
    if is_s3(url):
        with tempfile.NamedTemporaryFile(prefix="pairforge-upload-", suffix=".part") as spool:
            yield spool
            spool.flush()
            upload_file(spool.name, url, storage_options, config=config)
        return
    fs, path = get_fs(url, storage_options)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    f = open(tmp, "wb")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        written = f.tell()
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if os.path.getsize(path) != written:
        raise StorageError(f"write {redact(url)}: {os.path.getsize(path)} bytes on disk after writing {written}")


def upload_file(local_path: str, url: str, storage_options: dict | None = None, *,
                config: StorageConfig | None = None) -> int:
    """Upload the local file to S3 ``url`` and confirm it; returns its size.

    Each try sends the whole file again (one PUT, or a multipart upload that s3fs aborts if it
    fails), then asks the store for the object (HEAD, past s3fs's cache): only the expected size
    counts.  Each try is cut after :meth:`StorageConfig.upload_try_limit`: aiohttp waits for
    ``100 Continue`` and writes request bodies with no timeout of its own, so without this
    limit a server that accepts a request and never answers it would hold the upload forever.
    """
    cfg = _config(config)
    fs, path = get_fs(url, storage_options, config=cfg)
    expected = os.path.getsize(local_path)

    limit = cfg.upload_try_limit(expected)

    def attempt() -> None:
        try:
            fsspec.asyn.sync(fs.loop, _put_and_confirm, fs, local_path, path, expected, timeout=limit)
        except FSTimeoutError:
            raise TimeoutError(f"the server did not answer the upload within {limit:.1f}s") from None

    retry(attempt, what=f"upload {url}", config=cfg)
    return expected


async def _put_and_confirm(fs: Any, local_path: str, path: str, expected: int) -> None:
    await fs._put_file(local_path, path)
    fs.invalidate_cache(path)
    try:
        found = int((await fs._info(path))["size"])
    except FileNotFoundError:
        raise UploadNotConfirmed(f"s3://{path} is not in the store after its upload") from None
    if found != expected:
        raise UploadNotConfirmed(f"s3://{path} has {found} bytes in the store, {expected} were sent")


def write_bytes(url: str, data: bytes, storage_options: dict | None = None, *,
                config: StorageConfig | None = None) -> None:
    """Atomically write a small file (stats, job, manifest); returns once the store confirmed it."""
    with atomic_writer(url, storage_options, config=config) as f:
        f.write(data)


def takes_write(url: str, data: bytes, storage_options: dict | None = None, *,
                config: StorageConfig | None = None) -> bool:
    """Whether the store takes one small write now: a single try, no retries (an outage probe).

    False only when the store does not answer or refuses for a transient reason (down,
    restarting, throttling); a definite answer such as access denied is an answer: True.
    """
    one_try = dataclasses.replace(_config(config), attempts=1)
    try:
        write_bytes(url, data, storage_options, config=one_try)
    except StorageError as exc:
        log.info("storage: probe %s: %s", redact(url), exc)
        return False
    except Exception as exc:  # noqa: BLE001 - the store answered, if only to refuse
        log.info("storage: probe %s answered: %s", redact(url), _describe(exc))
    return True


def remove_stale_tmp(folder: str, storage_options: dict | None = None) -> int:
    """Delete ``*.tmp-*`` leftovers of an interrupted local run; returns how many were removed."""
    n = 0
    for name in listdir(folder, storage_options):
        if TMP_MARK in name:
            remove(join(folder, name), storage_options)
            n += 1
    return n
