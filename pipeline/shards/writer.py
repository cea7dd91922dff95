"""Writing a shard: samples → a byte-reproducible tar in the store, plus its commit marker.

Tars are byte-reproducible: members are written in sorted order with a fixed mtime, owner and
mode, so re-running a shard (retry, resume, another worker count) produces the same bytes and
the same sha256.  The commit marker (stats file) is written only after the store has confirmed
the tar; its presence is what "committed" means (img2dataset's convention, and the only one
that works on S3, which has no rename).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .. import storage
from .layout import TAR_MTIME, stats_name
from .manifest import pretty_json


class _HashingWriter:
    """File-like wrapper that sha256-hashes and counts what goes through it."""

    def __init__(self, f: Any):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        self.f.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.bytes


@dataclass
class ShardResult:
    """A shard tar the store has confirmed: ``bytes`` is both what was written and what the
    store reports (see :func:`storage.atomic_writer`)."""

    name: str
    count: int
    bytes: int
    sha256: str
    write_seconds: float          # building the tar (samples → tar stream)
    upload_seconds: float = 0.0   # storing it: upload, retries and confirmation (S3); fsync+rename (local)


def write_shard(url: str, samples: Iterable[dict], storage_options: dict | None = None, *,
                config: storage.StorageConfig | None = None) -> ShardResult:
    """Stream pre-encoded samples into a tar at ``url``; return once the store has confirmed it.

    The tar is built into :func:`storage.atomic_writer`, which spools it (on S3) and uploads it
    with retries that re-send the bytes, so a shard is never reported written on the strength
    of a failed upload.  We open (and close) the destination ourselves: webdataset's
    ``TarWriter`` does not close a file object it did not open.
    """
    import webdataset as wds

    t_write = 0.0
    count = 0
    t_done = time.perf_counter()
    with storage.atomic_writer(url, storage_options, config=config) as f:
        hw = _HashingWriter(f)
        tw = wds.TarWriter(hw, encoder=False, mtime=TAR_MTIME)
        for sample in samples:
            t0 = time.perf_counter()
            tw.write(sample)
            t_write += time.perf_counter() - t0
            count += 1
        tw.close()
        t_done = time.perf_counter()
    t_upload = time.perf_counter() - t_done
    return ShardResult(storage.basename(url), count, hw.bytes, hw.sha.hexdigest(), t_write, t_upload)



def write_stats(dataset_url: str, shard: str, stats: dict, storage_options: dict | None = None, *,
                config: storage.StorageConfig | None = None) -> None:
    """Write a shard's commit marker; call it only once the tar is confirmed in the store."""
    storage.write_bytes(storage.join(dataset_url, stats_name(shard)), pretty_json(stats), storage_options,
                        config=config)
