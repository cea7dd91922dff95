"""The shard format: the one contract between the factory that writes datasets and the trainer
that reads them.

Both sides import from here and nowhere else: names and constants (:mod:`.layout`), sample
encoding and safe decoding (:mod:`.codec`), the tar writer and commit markers (:mod:`.writer`),
the manifest (:mod:`.manifest`) and the verifying reader (:mod:`.reader`).  The modules import
in that order only (layout ← codec, manifest ← writer, reader), so there is no cycle.
"""
from .codec import EncodeConfig, UnsafeMemberError, decode_image_bytes, decode_sample, encode_image, encode_sample
from .layout import FORMAT, MANIFEST_NAME, PIPELINE_VERSION, SAFE_EXTS, shard_name, stats_name
from .manifest import build_manifest, committed_shards, load_manifest, pretty_json, read_json, unconfirmed_shards
from .reader import (
    ON_DAMAGE,
    ShardIntegrityError,
    ShardReader,
    ShardSource,
    SkippedShards,
    UnknownShard,
    dataset_shard,
    pick_shards,
    read_pairs,
    shard_sources,
    shard_urls,
    verified_stream,
    verify_shard,
)
from .writer import ShardResult, write_shard, write_stats

__all__ = [
    "FORMAT", "MANIFEST_NAME", "PIPELINE_VERSION", "SAFE_EXTS", "shard_name", "stats_name",
    "EncodeConfig", "encode_image", "encode_sample", "decode_image_bytes", "decode_sample", "UnsafeMemberError",
    "ShardResult", "write_shard", "write_stats",
    "build_manifest", "committed_shards", "unconfirmed_shards", "load_manifest", "read_json", "pretty_json",
    "ShardSource", "dataset_shard", "shard_sources", "shard_urls", "pick_shards", "UnknownShard",
    "ShardReader", "ShardIntegrityError",
    "SkippedShards", "verify_shard", "verified_stream", "read_pairs", "ON_DAMAGE",
]
