"""Reading shards safely: each shard checked against its manifest entry while it streams.

The reader (:func:`read_pairs`, :class:`ShardReader`) groups tar members the way webdataset
does but never calls webdataset's default decoders (which include pickle/torch handlers):
members go through :func:`~.codec.decode_sample`.  Each shard of a dataset is checked against
the manifest's size and sha256 as it is read (:class:`ShardIntegrityError`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from pairforge.errors import UsageError, WorkFailed

from .. import storage
from .codec import decode_sample
from .manifest import load_manifest


@dataclass(frozen=True)
class ShardSource:
    """One shard to read: its URL and, when a manifest lists it, the size and sha256 it must have.

    A tar URL or brace pattern read without a manifest has ``bytes = sha256 = None``: there is
    nothing to verify it against.
    """

    url: str
    bytes: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return storage.basename(self.url)

    @property
    def verifiable(self) -> bool:
        return self.bytes is not None and self.sha256 is not None


def dataset_shard(dataset_url: str, entry: dict) -> ShardSource:
    """The :class:`ShardSource` of one manifest entry (``{name, bytes, sha256, …}``) of a dataset."""
    base = storage.normalize(str(dataset_url))
    if base.endswith("manifest.json"):
        base = base.rsplit("/", 1)[0]
    size = entry.get("bytes")
    return ShardSource(storage.join(base, entry["name"]), None if size is None else int(size), entry.get("sha256"))


def shard_sources(url: str, shards: Sequence[int | str] | None = None,
                  storage_options: dict | None = None) -> list[ShardSource]:
    """Like :func:`shard_urls`, with each shard's recorded size and sha256 when a manifest lists it."""
    url = str(url)
    if "{" in url:
        import braceexpand

        sources = [ShardSource(storage.normalize(u)) for u in braceexpand.braceexpand(url)]
    elif url.endswith(".tar"):
        sources = [ShardSource(storage.normalize(url))]
    else:
        sources = [dataset_shard(url, s) for s in load_manifest(url, storage_options)["shards"]]
    return sources if shards is None else pick_shards(sources, shards, lambda s: s.name, url)


class UnknownShard(UsageError, KeyError):
    """A shard picked by index or name that the dataset does not have (exit 2: the user's pick)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def pick_shards(listed: Sequence[Any], picks: Sequence[int | str], name_of: Callable[[Any], str],
                url: str) -> list[Any]:
    """The items of ``listed`` (a dataset's shards, in manifest order) that ``picks`` names, by
    index (negative counts from the end) or by shard name; the one rule for every reader."""
    by_name = {name_of(item): item for item in listed}
    out = []
    for p in picks:
        if isinstance(p, (int, np.integer)) and -len(listed) <= int(p) < len(listed):
            out.append(listed[int(p)])
        elif isinstance(p, str) and p in by_name:
            out.append(by_name[p])
        else:
            raise UnknownShard(f"shard {p!r} is not part of {storage.redact(url)} ({len(listed)} shards)")
    return out


def shard_urls(url: str, shards: Sequence[int | str] | None = None,
               storage_options: dict | None = None) -> list[str]:
    """Resolve a dataset (folder with manifest.json), tar URL or brace pattern to shard URLs.

    ``shards`` picks a subset by index into the manifest's shard list or by shard name — what a
    training rank needs to read its own part.
    """
    return [s.url for s in shard_sources(url, shards, storage_options)]


# ---------------------------------------------------------------- integrity
class ShardIntegrityError(WorkFailed, ValueError):
    """A shard is missing, differs from its manifest entry (size or sha256), or is not a whole tar.

    ``shard`` is the (redacted) URL, ``problem`` one of ``missing``, ``size``, ``sha256``,
    ``tar``; ``expected``/``found`` hold ``bytes`` and ``sha256`` where known.  It can be built
    from a message alone, so a DataLoader worker's error re-raises in the main process as this type.
    """

    def __init__(self, message: str, *, shard: str = "", problem: str = "", expected: dict | None = None,
                 found: dict | None = None):
        super().__init__(message)
        self.shard, self.problem = shard, problem
        self.expected, self.found = expected or {}, found or {}

    def to_dict(self) -> dict:
        return {"shard": self.shard, "problem": self.problem, "expected": self.expected, "found": self.found,
                "message": str(self)}


def _damage(source: ShardSource, problem: str, detail: str, found: dict) -> ShardIntegrityError:
    url = storage.redact(source.url)
    expected = {"bytes": source.bytes, "sha256": source.sha256} if source.verifiable else {}
    return ShardIntegrityError(f"damaged shard {url}: {detail}", shard=url, problem=problem, expected=expected,
                               found=found)


def _check_size(source: ShardSource, storage_options: dict | None) -> None:
    """Before reading: the stored object must exist with the recorded size (a HEAD on S3)."""
    if not source.verifiable:
        return
    found = storage.size(source.url, storage_options)
    if found is None:
        raise _damage(source, "missing", f"not found (the manifest records {source.bytes} bytes)", {})
    if found != source.bytes:
        raise _damage(source, "size", f"{found} bytes, the manifest records {source.bytes} "
                                      "(truncated or overwritten)", {"bytes": found})


class _HashingReader:
    """Read-only file wrapper that sha256-hashes and counts every byte read through it.

    The tar parser reads through it, so the digest covers every byte from the start of the
    shard, including members read only to be skipped; :meth:`drain` reads the rest (tar end
    padding, or everything after an early stop) so the check needs no second read.
    """

    def __init__(self, f: Any, on_bytes: Callable[[int], Any] | None = None):
        self.f, self.on_bytes = f, on_bytes
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass


def _check_digest(source: ShardSource, reader: _HashingReader) -> None:
    """At the end of the stream: byte count and sha256 must match the manifest."""
    if not source.verifiable:
        return
    found = {"bytes": reader.bytes, "sha256": reader.sha.hexdigest()}
    if found["bytes"] != source.bytes:
        raise _damage(source, "size", f"{found['bytes']} bytes read, the manifest records {source.bytes}", found)
    if found["sha256"] != source.sha256:
        raise _damage(source, "sha256", f"sha256 {found['sha256']}, the manifest records {source.sha256} "
                                        "(same size, different bytes)", found)


@contextlib.contextmanager
def _open_hashing(source: ShardSource, storage_options: dict | None,
                  on_bytes: Callable[[int], Any] | None = None) -> Iterator[_HashingReader]:
    fs, path = storage.get_fs(source.url, storage_options)
    kw = {"block_size": 8 * 1024 * 1024} if storage.is_s3(source.url) else {}
    with storage.retry(lambda: fs.open(path, "rb", **kw), what=f"open {source.url}") as f:
        yield _HashingReader(f, on_bytes)


def verify_shard(source: ShardSource, storage_options: dict | None = None,
                 on_bytes: Callable[[int], Any] | None = None) -> int:
    """Check one shard against its manifest entry without parsing it; returns the bytes read.

    Size first (a HEAD on S3: a truncated shard is reported without downloading it), then one
    streamed read for the sha256.  Raises :class:`ShardIntegrityError`.
    """
    if not source.verifiable:
        raise ValueError(f"{storage.redact(source.url)}: no manifest entry, nothing to verify against")
    _check_size(source, storage_options)
    with _open_hashing(source, storage_options, on_bytes) as reader:
        _read_rest_and_check(source, reader)
    return reader.bytes


@contextlib.contextmanager
def verified_stream(source: ShardSource, storage_options: dict | None = None) -> Iterator[Any]:
    """A shard's bytes as one read-only stream, checked as every read is: the recorded size before
    the first byte, byte count and sha256 when the block ends (the rest is read first).

    For code that parses the tar itself (the synth source lister needs member offsets).  An error
    inside the block is blamed on the shard when the shard is damaged, as :class:`ShardReader`
    does.  Raises :class:`ShardIntegrityError`; a shard with no manifest entry is read unchecked.
    """
    _check_size(source, storage_options)
    with _open_hashing(source, storage_options) as reader:
        try:
            yield reader
        except Exception as exc:
            _blame_damage(source, reader, exc)
            raise
        _read_rest_and_check(source, reader)


def _read_rest_and_check(source: ShardSource, reader: _HashingReader) -> None:
    """Read what is left of the shard, then compare byte count and sha256 with its manifest entry."""
    reader.drain()
    _check_digest(source, reader)


def _blame_damage(source: ShardSource, reader: _HashingReader, cause: BaseException) -> None:
    """After ``cause`` broke off a read: raise :class:`ShardIntegrityError` from it if the shard
    does not match its manifest entry; return when it does, or when there is nothing to check."""
    if not source.verifiable:
        return
    try:
        _read_rest_and_check(source, reader)
    except ShardIntegrityError as damage:
        raise damage from cause


_SKIP_META = re.compile(r"__[^/]*__($|/)")


class ShardReader:
    """One pass over one shard: raw webdataset samples out, verified against its manifest entry.

    Use it as ``with ShardReader(source) as reader: for raw in reader: …``.  Entering checks the
    size before the first byte is read; iterating hashes everything the tar parser reads and
    compares byte count and sha256 once the tar ends — before the shard's last sample is handed
    out.  A consumer that leaves early leaves the shard unverified (nothing more is read).  A tar
    that breaks off (e.g. truncated inside a member) raises :class:`ShardIntegrityError`, never a
    bare ``tarfile.ReadError``.  An error raised inside the block (an image that does not decode)
    is blamed on the shard when the shard is damaged: the rest is read and
    :class:`ShardIntegrityError` is raised from that error; an intact shard lets it through.
    """

    def __init__(self, source: ShardSource, storage_options: dict | None = None):
        self.source, self.storage_options = source, storage_options
        self._stack = contextlib.ExitStack()
        self._reader: _HashingReader | None = None
        self._verified = False

    def __enter__(self) -> ShardReader:
        _check_size(self.source, self.storage_options)
        self._reader = self._stack.enter_context(_open_hashing(self.source, self.storage_options))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if isinstance(exc, Exception) and not isinstance(exc, ShardIntegrityError):
                self._raise_if_damaged(exc)
        finally:
            self._reader = None
            self._stack.close()

    def __iter__(self) -> Iterator[dict]:
        from webdataset.tariterators import group_by_keys

        if self._reader is None:
            raise RuntimeError("read a shard inside `with ShardReader(source) as reader:`")
        yield from group_by_keys(self._members())

    def _members(self) -> Iterator[dict]:
        try:
            yield from _tar_members(self._reader, self.source.url)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            self._raise_if_damaged(exc)
            raise _damage(self.source, "tar", f"not a complete tar archive ({exc})", {}) from exc
        self._finish()

    def _finish(self) -> None:
        assert self._reader is not None
        self._reader.drain()
        self._verified = True
        _check_digest(self.source, self._reader)

    def _raise_if_damaged(self, cause: BaseException) -> None:
        """Read the rest of the shard; raise :class:`ShardIntegrityError` from ``cause`` if it does
        not match the manifest.  Returns when it does, or when there is nothing to check."""
        if self._verified or self._reader is None or not self.source.verifiable:
            return
        try:
            self._finish()
        except ShardIntegrityError as damage:
            raise damage from cause


def _tar_members(stream: Any, url: str) -> Iterator[dict]:
    """Regular files of a streamed tar as webdataset file records (``fname``, ``data``, ``__url__``)."""
    tar = tarfile.open(fileobj=stream, mode="r|*")
    for info in tar:
        if info.isreg() and not _SKIP_META.match(info.name):
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
        tar.members = []  # streaming: do not keep every header in memory



class SkippedShards:
    """Damaged shards that ``read_pairs(on_damage="skip")`` left out, in this process.

    Each entry is the :class:`ShardIntegrityError` as a dict plus ``samples_read``: a shard whose
    size is wrong is skipped before any of it is read; one with the right size but wrong bytes
    is found at its end (or at its first undecodable sample), after its earlier samples were
    yielded.  A DataLoader worker counts in its own copy; the warning it emits is the report.
    """

    def __init__(self) -> None:
        self.shards: list[dict] = []

    @property
    def count(self) -> int:
        return len(self.shards)

    def add(self, damage: ShardIntegrityError, samples_read: int) -> None:
        self.shards.append({**damage.to_dict(), "samples_read": samples_read})
        warnings.warn(f"pairforge reader: skipped {damage} ({samples_read} of its samples had been read)",
                      stacklevel=2)


def _shard_pairs(source: ShardSource, strict: bool, storage_options: dict | None) -> Iterator[dict]:
    """Decoded pairs of one shard; a sample that fails to decode is blamed on the shard if it is damaged."""
    with ShardReader(source, storage_options) as reader:
        for raw in reader:
            pair = decode_sample(raw, strict=strict)
            if pair is not None:
                yield pair


def _verified_pairs(sources: Iterable[ShardSource], *, strict: bool, on_damage: str, skipped: SkippedShards,
                    storage_options: dict | None) -> Iterator[dict]:
    for source in sources:
        n = 0
        try:
            for pair in _shard_pairs(source, strict, storage_options):
                n += 1
                yield pair
        except ShardIntegrityError as damage:
            if on_damage == "raise":
                raise
            skipped.add(damage, n)


ON_DAMAGE = ("raise", "skip")


def read_pairs(url: str, shards: Sequence[int | str] | None = None, *, strict: bool = False,
               shuffle_shards: bool = False, on_damage: str = "raise", storage_options: dict | None = None) -> Any:
    """Stream decoded pairs from a pairforge dataset (local path, ``file://`` or ``s3://``).

    Yields ``{"key", "hr" (HWC uint8), "lr" (list of HWC uint8, one per view), "params" (dict)}``.
    The result is a webdataset pipeline (an ``IterableDataset``): iterate it directly or hand it
    to a ``torch.utils.data.DataLoader`` (shards are split across loader workers).  Pass
    ``shards`` (indices or names) to read a subset, e.g. one rank's part.

    Every shard of a dataset is checked against its manifest entry: its size before it is read
    (a HEAD on S3), its sha256 while it streams (one pass), compared when the shard ends.  A
    mismatch raises :class:`ShardIntegrityError` naming the shard, or with
    ``on_damage="skip"`` skips the rest of that shard with a warning and counts it in the
    result's ``skipped`` (:class:`SkippedShards`).  A tar URL or brace pattern has no manifest,
    so there is nothing to verify it against: only a tar that breaks off is reported (as
    :class:`ShardIntegrityError`); a tar cut exactly between members reads as a shorter one.
    """
    import random

    import webdataset as wds

    if on_damage not in ON_DAMAGE:
        raise ValueError(f"on_damage must be one of {ON_DAMAGE}, not {on_damage!r}")
    skipped = SkippedShards()
    pipe = wds.FluidWrapper(shard_sources(url, shards, storage_options))  # never split across nodes
    pipe.append(wds.split_by_worker)
    if shuffle_shards:
        pipe.append(wds.filters.shuffle(100, seed=random.randint(0, 1_000_000)))
    pipe.append(functools.partial(_verified_pairs, strict=strict, on_damage=on_damage, skipped=skipped,
                                  storage_options=storage_options))
    pipe.skipped = skipped
    return pipe
