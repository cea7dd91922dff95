"""pairforge's pair factory: HR images → degraded LR/HR WebDataset shards, and the safe reader.

Public API::

    from pairforge.pipeline import synth, read_pairs, load_manifest
    res = synth("bundled", "out/")            # -> SynthResult(url=..., status=..., manifest=...)
    for s in read_pairs(res.url): s["key"], s["hr"], s["lr"], s["params"]

Module map (one job each): ``sources`` (listing), ``decode`` (bytes → RGB or a skip reason),
``patching`` (albumentations crops), ``worker`` (one shard end to end), ``execution`` (Ray /
inline), ``shards`` (format: writer + safe reader), ``manifest`` (ids, commit markers,
manifest), ``storage`` (fsspec/s3fs), ``inspect`` (reports), ``job`` (orchestration).
"""
from __future__ import annotations

from .job import JobError, SynthResult, synth
from .shards import ShardIntegrityError, UnsafeMemberError, load_manifest, read_pairs, shard_urls, verify_shard
from .sources import SourceError
from .storage import StorageConfig, StorageError

__all__ = ["synth", "SynthResult", "JobError", "SourceError", "read_pairs", "load_manifest", "shard_urls",
           "UnsafeMemberError", "ShardIntegrityError", "verify_shard", "StorageConfig", "StorageError"]
