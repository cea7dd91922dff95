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

from pairforge.lazy import lazy_exports

#: public name → the module that defines it. Imported on first use (PEP 562): `pairforge ls`,
#: `inspect` or `presets` then start without torch (~2 s each), which only synth and the readers need.
_EXPORTS = {
    "synth": "job", "SynthResult": "job", "JobError": "job",
    "PairDataset": "pair_dataset", "PairLoader": "pair_dataset",
    "PatchConfig": "patching",
    "EncodeConfig": "shards", "ShardIntegrityError": "shards", "UnsafeMemberError": "shards",
    "load_manifest": "shards", "read_pairs": "shards", "shard_urls": "shards", "verify_shard": "shards",
    "SourceError": "sources",
    "StorageConfig": "storage", "StorageError": "storage",
    "DatasetConfig": "synth_config", "RunConfig": "synth_config", "SynthConfig": "synth_config",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
