"""A pairforge dataset as PNG folders, for training code that reads image folders (BasicSR's
``PairedImageDataset``, most SR repositories).

Layout of ``OUT``::

    hr/<key>.png            the HR patch
    lr/<key>.png            its LR, view 0 (BasicSR: dataroot_gt=hr, dataroot_lq=lr)
    lr_view<j>/<key>.png    view j ≥ 1, with ``views="all"``: the same names, another folder
    meta_info.txt           one line per pair, ``<key>.png (H,W,3)`` — BasicSR's meta_info_file
    export.json             what was exported from which dataset; written last

Reads are the shard contract's verified reads (size before, sha256 after every shard).  The
folder is built as ``OUT.partial`` and renamed to ``OUT`` only when every pair is written, so a
folder named ``OUT`` is always complete; an interrupted or failed export leaves ``OUT.partial``,
and the same command continues it (files are written by temp + rename, so any file there is
whole and is kept).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pairforge.errors import UsageError

from . import storage
from .shards import load_manifest, read_pairs, shard_sources

#: suffix of the folder an export is built in
PARTIAL = ".partial"
META_INFO = "meta_info.txt"
RECORD = "export.json"
VIEWS = ("first", "all")
#: zlib level of the PNGs: on a 256 px photo crop level 1 took 17 ms and 126 kB, Pillow's default 6
#: took 45 ms and 116 kB (2.6x the time for 8 % less); the pixels are the same at every level
COMPRESS_LEVEL = 1


@dataclass
class ExportResult:
    out: Path
    pairs: int
    views: int
    shards: list[str] = field(default_factory=list)


def lr_folder(view: int) -> str:
    """The folder of LR view ``view``: ``lr`` for view 0, ``lr_view<j>`` for the others."""
    return "lr" if view == 0 else f"lr_view{view}"


def export_folders(dataset: str, out: str | os.PathLike, *, limit: int | None = None,
                   shards: Sequence[int | str] | None = None, views: str = "first",
                   on_pair: Callable[[], Any] | None = None) -> ExportResult:
    """Write ``dataset``'s pairs (all, the ``shards`` given, at most ``limit``) as PNG folders in ``out``.

    Raises :class:`UsageError` for an ``out`` that exists (another export or anything else) and
    for bad arguments, :class:`~pairforge.pipeline.shards.ShardIntegrityError` (a
    ``WorkFailed``) for a damaged shard: ``out`` is then not created and ``out.partial`` holds
    what was written, which a second run with the same arguments completes.
    """
    if views not in VIEWS:
        raise UsageError(f"--views {views!r}: expected one of {', '.join(VIEWS)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: expected at least 1")
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists already; export into a new folder (or remove it)")
    manifest = load_manifest(dataset)  # NotADataset: not a finished pairforge dataset
    record = _record(dataset, manifest, limit, shards, views)
    work = out.with_name(out.name + PARTIAL)
    _check_partial(work, record)
    work.mkdir(parents=True, exist_ok=True)
    (work / RECORD).write_text(json.dumps({**record, "complete": False}, indent=1))
    lines, n_views = [], 1
    for sample in read_pairs(dataset, shards=shards, strict=True):
        if limit is not None and len(lines) >= limit:
            break
        name = f"{sample['key']}.png"
        lrs = sample["lr"] if views == "all" else sample["lr"][:1]
        n_views = max(n_views, len(lrs))
        _write_png(work / "hr" / name, sample["hr"])
        for j, lr in enumerate(lrs):
            _write_png(work / lr_folder(j) / name, lr)
        h, w = sample["hr"].shape[:2]
        lines.append(f"{name} ({h},{w},3)")
        if on_pair is not None:
            on_pair()
    if not lines:
        raise UsageError(f"{storage.redact(dataset)}: no pairs to export")
    (work / META_INFO).write_text("\n".join(lines) + "\n")
    (work / RECORD).write_text(json.dumps({**record, "complete": True, "pairs": len(lines), "views": n_views},
                                          indent=1))
    os.replace(work, out)
    return ExportResult(out, len(lines), n_views, record["shards"])


def _record(dataset: str, manifest: dict, limit: int | None, shards: Sequence[int | str] | None,
            views: str) -> dict:
    try:  # the shard contract's resolver, as read_pairs uses it: indices or names
        chosen = [s.name for s in shard_sources(dataset, shards)]
    except (KeyError, IndexError) as exc:  # a name the manifest does not list, an index past its end
        raise UsageError(f"--shards {', '.join(map(str, shards or []))}: {exc.args[0] if exc.args else exc}; "
                         f"the dataset has {len(manifest['shards'])} shard(s)") from None
    return {"dataset": storage.redact(str(dataset)), "dataset_id": manifest.get("dataset_id"), "shards": chosen,
            "limit": limit, "views": views, "layout": "hr/, lr/ (view 0), lr_view<j>/, meta_info.txt (BasicSR)"}


def _check_partial(work: Path, record: dict) -> None:
    """An ``OUT.partial`` from an earlier run continues only when it was made with the same arguments."""
    if not work.exists():
        return
    try:
        previous = json.loads((work / RECORD).read_text())
    except (OSError, ValueError):
        previous = None
    same = previous is not None and all(previous.get(k) == v for k, v in record.items())
    if not same:
        raise UsageError(f"{work} holds an unfinished export of other arguments (or something else); "
                         "remove it, or repeat that export's command to finish it")
    for tmp in work.rglob(".*.tmp-*"):  # a file the interrupted run was writing
        tmp.unlink()


def _write_png(path: Path, pixels: Any) -> None:
    """``path`` as a PNG, written to a temp name and renamed (a file there is whole and is kept)."""
    from PIL import Image

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(pixels).save(tmp, format="PNG", compress_level=COMPRESS_LEVEL)
    os.replace(tmp, path)
