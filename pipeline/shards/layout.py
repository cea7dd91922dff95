"""Names and constants of the shard format: what a dataset folder holds and what each tar holds.

A dataset folder::

    shard-000000.tar             samples (see below), byte-reproducible
    shard-000000.stats.json      the shard's commit marker: written only once its tar is confirmed
    manifest.json                written last: its presence makes the dataset usable
    job.json                     what the job was asked to do (source listing, config)

A sample inside a tar::

    KEY.hr.png        HR patch (png by default; webp lossless or jpg selectable)
    KEY.lr.png        LR view when K == 1, else KEY.lr.0.png … KEY.lr.{K-1}.png
    KEY.json          source id, crop box, seed, code version, per-view degradation records
"""
from __future__ import annotations

#: the ``format`` field of every manifest.json this code writes and reads
FORMAT = "pairforge-shards-v1"
#: bump when the bytes a given config produces change (encoders, member layout, key scheme);
#: part of every dataset id, so a bump makes new datasets instead of mixing old and new bytes
PIPELINE_VERSION = "1"
#: fixed tar member mtime (2024-01-01T00:00:00Z) so tars are byte-identical across runs
TAR_MTIME = 1704067200
SHARD_PATTERN = "shard-{:06d}.tar"
MANIFEST_NAME = "manifest.json"
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
#: the only member types the reader decodes (no pickle-capable formats)
SAFE_EXTS = IMAGE_EXTS + ("json", "npy")


def shard_name(index: int) -> str:
    """``3`` → ``shard-000003.tar``."""
    return SHARD_PATTERN.format(index)


def stats_name(shard: str) -> str:
    """``shard-000000.tar`` → ``shard-000000.stats.json`` (the shard's commit marker)."""
    return shard[: -len(".tar")] + ".stats.json"
