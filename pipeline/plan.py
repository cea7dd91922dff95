"""The plan of a ``synth`` job without doing it (``synth --dry-run``): what would be made, from
what, and how big, read from the listing and the inputs' headers only; nothing is written and
Ray is not started.

It lives in the pipeline, beside the job it predicts, so that its skip reasons are the
workers' own: an input's size limit comes from :func:`.decode.image_size` (the decoder's header
check) and its patch fit from :meth:`.patching.PatchConfig.size_problem`, never from a second
copy of their rules.  Damage inside pixel data is only found by decoding, so a dry run cannot
predict ``corrupt`` or ``flat_*`` skips beyond what the header shows.
"""
from __future__ import annotations

import os
from typing import Any

from . import storage
from .decode import SkipInput, image_size
from .job import JobPlan, plan_job
from .shards import stats_name
from .synth_config import DatasetConfig

#: encoded bytes per raw pixel byte, measured on photos (HR; LR views are noisier and compress less)
ENCODED_RATIO = {"png": (0.55, 0.75), "webp": (0.45, 0.65), "jpg": (0.15, 0.75)}
#: per pair: its JSON record and the tar headers/padding of its members
PAIR_OVERHEAD_BYTES = 4300


def dry_run_plan(source: str, out: str, dataset: DatasetConfig,
                 storage_options: dict | None = None) -> dict[str, Any]:
    """The plan as a JSON-ready dict: dataset id and URL, its state, inputs usable and skipped
    (with the workers' reasons), pairs, LR images, shards and estimated bytes."""
    plan = plan_job(source, out, dataset, storage_options)
    skipped = {item.name: why for item in plan.listing.items if (why := probe_input(item, plan, dataset))}
    usable = len(plan.listing.items) - len(skipped)
    pairs = usable * dataset.patch.per_image
    return {
        "dry_run": True, "dataset_id": plan.dataset_id, "url": plan.url, "state": dataset_state(plan),
        "preset": plan.degradation.name, "scale": int(plan.degradation.scale), "hr_size": plan.patch.size,
        "inputs": len(plan.listing.items), "usable_inputs": usable,
        "skipped_inputs": [{"name": n, "reason": r, "detail": det} for n, (r, det) in sorted(skipped.items())],
        "listing_skipped": plan.listing.skipped, "ignored_files": plan.listing.ignored,
        "pairs": pairs, "lr_images": pairs * dataset.views, "shards": len(plan.shard_names),
        "images_per_shard": dataset.images_per_shard, "estimated_bytes": estimate_bytes(pairs, plan, dataset),
    }


def probe_input(item: Any, plan: JobPlan, dataset: DatasetConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` a worker would skip a local input for, from its header alone
    (None: usable, or not a local file, which only a real read can judge)."""
    if item.offset is not None or "://" in item.url or not os.path.isfile(item.url):
        return None
    if os.path.getsize(item.url) == 0:
        return "empty_file", ""
    try:
        w, h = image_size(item.url, dataset.max_pixels)
        problem = plan.patch.size_problem(w, h)
    except SkipInput as skip:
        return skip.reason, skip.detail
    return ("too_small", problem) if problem else None


def dataset_state(plan: JobPlan) -> str:
    """new / unfinished (how far) / complete, for the dataset folder this job maps to."""
    names = set(storage.listdir(plan.url))
    if "manifest.json" in names:
        return "complete (synth would reuse it and do nothing)"
    if "job.json" in names:
        done = sum(stats_name(n) in names for n in plan.shard_names)
        return f"unfinished ({done} of {len(plan.shard_names)} shards committed; --resume continues it)"
    return "new"


def estimate_bytes(pairs: int, plan: JobPlan, dataset: DatasetConfig) -> int:
    """Shard bytes for ``pairs`` pairs, from the measured compression ratios of each format."""
    hr_ratio = ENCODED_RATIO[dataset.encode.hr_format][0]
    lr_ratio = ENCODED_RATIO[dataset.encode.lr_format][1]
    hr = plan.patch.size ** 2 * 3
    lr = (plan.patch.size // int(plan.degradation.scale)) ** 2 * 3
    return int(pairs * (hr * hr_ratio + dataset.views * lr * lr_ratio + PAIR_OVERHEAD_BYTES))
