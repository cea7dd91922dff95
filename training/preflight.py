"""Checks of a training dataset against the config, made before any rank starts.

A mismatch found here costs a second and one clear line; found inside the ranks it costs a
DeepSpeed start-up and a traceback per rank, or (patches smaller than the crop) nothing at all:
the run would silently train on smaller images than the recipe asks for.

With ``shards=True`` every shard the manifest lists is also asked of the store (one HEAD or
stat per shard, a few milliseconds each): a deleted or truncated shard used to be found by
the rank that first read it, minutes into the run and after validation had started.
"""
from __future__ import annotations

from pairforge.errors import UsageError
from pairforge.pipeline import storage
from pairforge.pipeline.shards import load_manifest, unconfirmed_shards

from .config import TrainConfig

#: problems named in full in the one-line refusal; the rest are counted
SHOWN_PROBLEMS = 3


class DatasetMismatch(UsageError, ValueError):
    """The dataset cannot feed this config; the message names both sides and the flag that fixes it."""


class ShardsUnusable(DatasetMismatch):
    """Shards the manifest lists are missing from the store or are not the size it records."""


def check_dataset(cfg: TrainConfig, data: str, *, shards: bool = False) -> dict:
    """The dataset's manifest, once it is known to suit ``cfg``; raises :class:`DatasetMismatch`
    (:class:`ShardsUnusable` with ``shards=True`` when a listed shard is missing or resized).

    A missing or unfinished dataset raises ``FileNotFoundError`` (from :func:`load_manifest`); a
    store that cannot be reached, :class:`~pairforge.pipeline.storage.StorageError`.
    """
    manifest = load_manifest(data)
    samples = int(manifest.get("totals", {}).get("samples", 0))
    if samples == 0:
        raise DatasetMismatch(f"{data}: the dataset holds no pairs (its synth job skipped every input; "
                              "see `pairforge inspect`)")
    hr, scale, crop = int(manifest["hr_size"]), int(manifest["scale"]), cfg.data.crop_size
    if crop is not None and crop > hr:
        raise DatasetMismatch(
            f"{data}: the dataset's HR patches are {hr}×{hr} but data.crop_size is {crop}; train with "
            f"--crop-size {hr} (or smaller), or make {crop}×{crop} patches with `pairforge synth --patch-size {crop}`")
    if crop is not None and crop % scale:
        raise DatasetMismatch(f"{data}: data.crop_size={crop} is not a multiple of the dataset's scale ×{scale}; "
                              f"use --crop-size {crop - crop % scale}")
    if shards:
        check_shards(data, manifest)
    return manifest


def check_shards(data: str, manifest: dict) -> None:
    """Every shard of ``manifest`` is in the store with the byte size it records, or
    :class:`ShardsUnusable` naming those that are not (sizes only: the sha256 of every byte is
    checked by the ranks as they read, see training/data.py)."""
    base = storage.normalize(str(data))
    if base.endswith(".json"):  # the manifest's own URL
        base = base.rsplit("/", 1)[0]
    entries = {e["name"]: e for e in manifest.get("shards", [])}
    problems = unconfirmed_shards(base, entries)
    if problems:
        raise ShardsUnusable(shard_problems(base, problems, len(entries)))


def shard_problems(dataset: str, problems: dict[str, str], total: int) -> str:
    """One line: which shards differ from the manifest and what to do about it."""
    shown = [problems[name] for name in sorted(problems)[:SHOWN_PROBLEMS]]
    more = len(problems) - len(shown)
    listed = "; ".join(shown) + (f"; and {more} more" if more else "")
    return (f"{storage.redact(dataset)}: {len(problems)} of {total} shard(s) are not as its manifest records them: "
            f"{listed} (restore them, or make the dataset again with `pairforge synth`)")
