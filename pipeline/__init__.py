"""pairforge's pair factory: HR images → degraded LR/HR WebDataset shards, and the safe reader.

Public API::

    from pairforge.pipeline import SynthConfig, synth, read_pairs, load_manifest
    cfg = SynthConfig.from_dict({"dataset": {"seed": 1}, "run": {"executor": "inline"}})
    res = synth("bundled", "out/", cfg)       # -> SynthResult(url=..., status=..., manifest=...)
    for s in read_pairs(res.url): s["key"], s["hr"], s["lr"], s["params"]
    loader = PairDataset(res.url, crop=256).loader(batch_size=8, num_workers=4)  # any DDP loop

Module map (one job each): ``synth_config`` (the job's settings), ``sources`` (listing),
``decode`` (bytes → RGB or a skip reason), ``patching`` (albumentations crops), ``worker`` (one
shard end to end), ``execution`` (Ray / inline), ``shards`` (the format: layout, codec, writer,
commit markers, manifest, safe reader), ``identity`` (dataset ids), ``storage`` (fsspec/s3fs),
``inspect`` (reports), ``job`` (orchestration), ``pair_dataset`` (pairs for any
training loop: ranks, epochs, resume).
"""
from __future__ import annotations

from .job import JobError, SynthResult, synth
from .pair_dataset import PairDataset, PairLoader
from .patching import PatchConfig
from .shards import (
    EncodeConfig,
    ShardIntegrityError,
    UnsafeMemberError,
    load_manifest,
    read_pairs,
    shard_urls,
    verify_shard,
)
from .sources import SourceError
from .storage import StorageConfig, StorageError
from .synth_config import DatasetConfig, RunConfig, SynthConfig

__all__ = ["synth", "PairDataset", "PairLoader", "SynthConfig", "DatasetConfig", "RunConfig", "PatchConfig", "EncodeConfig", "SynthResult",
           "JobError", "SourceError", "read_pairs", "load_manifest", "shard_urls", "UnsafeMemberError",
           "ShardIntegrityError", "verify_shard", "StorageConfig", "StorageError"]
