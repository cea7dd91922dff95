"""``pairforge ls OUT``: the datasets under an output root, complete or unfinished.

A dataset folder (``OUT/<dataset-id>/``) is *complete* once ``manifest.json`` exists and
*unfinished* while it holds only ``job.json`` and the shards committed so far (``synth
--resume`` finishes it). Each row: status, folder name, degradation preset, pairs, shards,
bytes and the time of the newest file read (UTC). OUT may also be one dataset folder.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

#: the files that make a folder a pairforge dataset (complete / unfinished)
MANIFEST, JOB = "manifest.json", "job.json"
STATS_SUFFIX = ".stats.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ls", help="list the datasets under an output root (complete or unfinished)",
                              description=__doc__.splitlines()[0])
    p.add_argument("out", metavar="OUT",
                   help="an output root given to `pairforge synth --out` (local path, file:// or s3://), "
                        "or one dataset folder")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    return p


def run(args: argparse.Namespace) -> int:
    from pairforge.errors import UsageError
    from pairforge.pipeline import storage

    root = storage.normalize(args.out)
    try:
        names = storage.listdir(root)
        if not names and not storage.exists(root):
            print(f"pairforge ls: error: {storage.redact(root)} does not exist", file=sys.stderr)
            return 2
        folders = [root] if MANIFEST in names or JOB in names else [storage.join(root, n) for n in names]
        datasets = [d for d in (describe(url) for url in folders) if d is not None]
    except OSError as exc:  # a root out of reach (StorageError too): the address to check
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"cannot list {storage.redact(root)}: {exc}") from exc
    if args.json:
        print(json.dumps({"root": storage.redact(root), "datasets": datasets}))
        return 0
    if not datasets:
        print(f"pairforge ls: no pairforge datasets under {storage.redact(root)}", file=sys.stderr)
        return 0
    print(format_table(datasets))
    if any(d["status"] == "unfinished" for d in datasets):
        print("unfinished: re-run the same `pairforge synth` with --resume to finish it "
              "(its settings are in the folder's job.json)", file=sys.stderr)
    return 0


def describe(url: str) -> dict[str, Any] | None:
    """One dataset folder as a row (None when ``url`` is not a pairforge dataset)."""
    from pairforge.pipeline import storage
    from pairforge.pipeline.shards import read_json

    try:
        names = storage.listdir(url)
    except NotADirectoryError:
        return None
    row: dict[str, Any] = {"name": storage.basename(url), "url": storage.redact(url)}
    if MANIFEST in names and (man := read_json(storage.join(url, MANIFEST))) is not None:
        totals = man.get("totals", {})
        return {**row, "status": "complete", "dataset_id": man.get("dataset_id"), "preset": man.get("degradation"),
                "pairs": int(totals.get("samples", 0)), "shards": int(totals.get("shards", 0)),
                "shards_total": int(totals.get("shards", 0)), "bytes": int(totals.get("bytes", 0)),
                "date": _modified(storage.join(url, MANIFEST))}
    if JOB not in names or (job := read_json(storage.join(url, JOB))) is None:
        return None
    stats = [read_json(storage.join(url, n)) for n in names if n.endswith(STATS_SUFFIX)]
    done = [s for s in stats if s and s.get("status") == "committed"]
    dates = [_modified(storage.join(url, n)) for n in names if n == JOB or n.endswith(STATS_SUFFIX)]
    return {**row, "status": "unfinished", "dataset_id": job.get("dataset_id"), "preset": job.get("degradation_name"),
            "pairs": sum(int(s.get("count", 0)) for s in done), "shards": len(done),
            "shards_total": len(job.get("shards", [])), "bytes": sum(int(s.get("bytes", 0)) for s in done),
            "date": max((d for d in dates if d), default=None)}


def _modified(url: str) -> str | None:
    """The object's modification time, ISO 8601 UTC to the second (None if the store has none)."""
    from pairforge.pipeline import storage

    fs, path = storage.get_fs(url)
    try:
        when = fs.modified(path)
    except (OSError, NotImplementedError, KeyError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(datasets: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table, header first."""
    from pairforge.pipeline.inspect import human_bytes

    head = ("STATUS", "DATASET", "PRESET", "PAIRS", "SHARDS", "SIZE", "DATE (UTC)")
    rows = [(d["status"], d["name"], str(d["preset"] or "?"), str(d["pairs"]),
             str(d["shards"]) if d["status"] == "complete" else f"{d['shards']}/{d['shards_total']}",
             human_bytes(d["bytes"]), (d["date"] or "?").replace("T", " ").rstrip("Z")) for d in datasets]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    right = {3, 4, 5}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in (head, *rows))
