"""The manifest and the commit markers it is built from.

* stats files (``shard-NNNNNN.stats.json``) — written by a worker after its tar is confirmed
  (:func:`~.writer.write_stats`); a shard counts as committed only while its tar exists with
  the size its stats record (:func:`committed_shards`).
* ``manifest.json`` — written last by the driver once every shard is committed and confirmed
  present (:func:`unconfirmed_shards`); its presence makes the dataset usable.  It contains no
  timestamps, so it is byte-identical across runs.
"""
from __future__ import annotations

import json
from typing import Any

from pairforge.errors import UsageError

from .. import storage
from .layout import FORMAT, MANIFEST_NAME, stats_name


def pretty_json(obj: Any) -> bytes:
    """Sorted, indented JSON: the same dict always gives the same bytes (no timestamps inside)."""
    return (json.dumps(obj, sort_keys=True, indent=1, default=str) + "\n").encode()


def read_json(url: str, storage_options: dict | None = None, *,
              config: storage.StorageConfig | None = None) -> dict | None:
    """Parsed JSON at ``url``, or None if it does not exist (or is unreadable garbage)."""
    try:
        data = storage.read_bytes(url, storage_options, config=config)
    except FileNotFoundError:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def committed_shards(dataset_url: str, expected: list[str], storage_options: dict | None = None, *,
                     config: storage.StorageConfig | None = None) -> dict[str, dict]:
    """Stats of the shards in ``expected`` whose commit marker exists *and* matches their tar.

    A stats file whose tar is missing or has another size (someone deleted/truncated it) does
    not count: that shard is redone.
    """
    names = set(storage.listdir(dataset_url, storage_options, config=config))
    out: dict[str, dict] = {}
    for shard in expected:
        if stats_name(shard) not in names:
            continue
        stats = read_json(storage.join(dataset_url, stats_name(shard)), storage_options, config=config)
        if not stats or stats.get("status") != "committed":
            continue
        size = (storage.size(storage.join(dataset_url, shard), storage_options, config=config)
                if shard in names else None)
        if size is not None and size == stats.get("bytes"):
            out[shard] = stats
    return out


def unconfirmed_shards(dataset_url: str, stats: dict[str, dict], storage_options: dict | None = None, *,
                       config: storage.StorageConfig | None = None) -> dict[str, str]:
    """Shards whose tar the store does not report with the size their stats record, and why.

    Asked of the store itself (a HEAD per tar, past any cache) right before the manifest is
    written: the manifest is the dataset's promise that every shard it lists is there.
    """
    urls = {name: storage.join(dataset_url, name) for name in stats}
    found = storage.sizes(list(urls.values()), storage_options, config=config)
    problems: dict[str, str] = {}
    for name, url in urls.items():
        recorded, got = stats[name].get("bytes"), found[url]
        if got is None:
            problems[name] = f"{storage.redact(url)} is missing from the store"
        elif got != recorded:
            problems[name] = f"{storage.redact(url)} has {got} bytes in the store, its stats record {recorded}"
    return problems


def build_manifest(job: dict, stats: dict[str, dict]) -> dict:
    """The manifest dict from the job description and the committed shards' stats."""
    shards, skipped_by_reason = [], {}
    total = inputs = skipped = patches_dropped = 0
    for name in job["shards"]:
        s = stats[name]
        dropped = sum("patch" in item for item in s["skipped"])  # one degenerate patch of a used input
        shards.append({"name": name, "count": s["count"], "bytes": s["bytes"], "sha256": s["sha256"],
                       "inputs": s["inputs"], "skipped": len(s["skipped"]) - dropped})
        total += s["count"]
        inputs += s["inputs"]
        skipped += len(s["skipped"]) - dropped
        patches_dropped += dropped
        for item in s["skipped"]:
            skipped_by_reason[item["reason"]] = skipped_by_reason.get(item["reason"], 0) + 1
    return {
        "format": FORMAT,
        "dataset_id": job["dataset_id"],
        "config_hash": job["config_hash"],
        "config": job["identity"],
        "seed": job["identity"]["seed"],
        "code_version": job["identity"]["code_version"],
        "scale": job["scale"],
        "hr_size": job["hr_size"],
        "lr_size": job["hr_size"] // job["scale"],
        "views": job["identity"]["views"],
        "degradation": job["degradation_name"],
        "source": job["source"],
        "totals": {"samples": total, "shards": len(shards), "inputs": inputs, "skipped_inputs": skipped,
                   **({"skipped_patches": patches_dropped} if patches_dropped else {}),
                   "skipped_by_reason": dict(sorted(skipped_by_reason.items())),
                   "bytes": sum(s["bytes"] for s in shards)},
        "shards": shards,
    }


class NotADataset(UsageError, FileNotFoundError):
    """No readable manifest of a known format where a finished pairforge dataset was expected (exit 2)."""


def load_manifest(url: str, storage_options: dict | None = None) -> dict:
    """The manifest of a dataset (a folder URL, or the manifest.json URL itself).

    Raises :class:`NotADataset` (a ``FileNotFoundError``) with an explanation when the dataset is
    incomplete or of another format.
    """
    url = storage.normalize(str(url))
    murl = url if url.endswith(".json") else storage.join(url, MANIFEST_NAME)
    man = read_json(murl, storage_options)
    if man is None:
        raise NotADataset(
            f"no readable manifest.json at {storage.redact(murl)}: not a pairforge dataset, or its "
            "synth job has not finished (re-run it with --resume)")
    if man.get("format") != FORMAT:
        raise NotADataset(f"{storage.redact(murl)}: unknown dataset format {man.get('format')!r}")
    return man
