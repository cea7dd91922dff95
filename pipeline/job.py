"""The synth job: plan (list, identify, split into shards), skip what is done, run, commit.

``synth()`` is the Python API behind ``pairforge synth``.  Life of a job:

1. resolve the degradation config and list the source (sorted, content-hashed);
2. compute the dataset id from everything that determines the output bytes; the dataset lives
   at ``OUT/<id>/`` — another config gets another folder and can never overwrite this one;
3. if ``manifest.json`` is there, the dataset already exists: return it, do no work;
4. otherwise write ``job.json`` (the plan), and run every shard whose commit marker is missing
   (``--resume`` after an interruption; without it, a half-finished folder is an error rather
   than a silent guess);
5. when every shard is committed, ask the store for every tar (a HEAD each: present, with the
   size its stats record) and only then write ``manifest.json``, last.

A write counts only once the store confirms it (see :mod:`pipeline.storage`): a shard's stats
file (its commit marker) is written after its tar is confirmed, the manifest after all of them.
Every storage call is bounded by one :class:`storage.StorageConfig` (timeouts, attempts,
deadline), resolved here from the environment and handed to the workers.  A store that fails
for good ends the job as ``failed`` — the result names each object and its last error, and no
manifest is written; ``--resume`` then redoes exactly the shards that are not committed.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .decode import DEFAULT_MAX_PIXELS
from .execution import InlineExecutor, RayExecutor, init_ray, shutdown_ray
from .identity import config_hash, dataset_id
from .patching import PatchConfig
from .shards import (MANIFEST_NAME, PIPELINE_VERSION, EncodeConfig, build_manifest, committed_shards, pretty_json,
                     read_json, shard_name, unconfirmed_shards)
from .sources import SourceError, list_source
from .worker import JobSpec, ShardTask

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """A job that cannot run as asked (existing interrupted run, bad output URL, …)."""


@dataclass
class SynthResult:
    url: str                       # the dataset folder (holds manifest.json when ok)
    dataset_id: str
    status: str                    # "created" | "resumed" | "reused" | "failed"
    shards_total: int
    shards_written: list[str] = field(default_factory=list)
    #: object name (a shard, or manifest.json) -> why it is not in the dataset; names no credentials
    failed: dict[str, str] = field(default_factory=dict)
    manifest: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)  # listing / startup / run seconds

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def resolve_degradation(preset: str | None = None, config: Any = None):
    """A DegradationConfig from an object, a YAML path, or a preset name."""
    from pairforge.degradations import load_preset

    if config is not None and not isinstance(config, (str, os.PathLike)):
        return config
    name = str(config) if config is not None else (preset or "realesrgan-x4plus")
    try:
        return load_preset(name)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise JobError(f"unknown degradation preset/config {name!r}: {exc}") from None


def code_version() -> dict:
    from pairforge import degradations

    return {"pipeline": PIPELINE_VERSION, "degradations": str(getattr(degradations, "__version__", "?"))}


def default_workers() -> int:
    """One CPU worker per core (each degrades single-threaded; see worker.CPU_TORCH_THREADS)."""
    return max(1, os.cpu_count() or 1)


def synth(source: str, out: str, *, preset: str | None = "realesrgan-x4plus", config: Any = None,
          seed: int = 0, patches_per_image: int = 4, views: int = 1, workers: int | None = None,
          ray_address: str | None = None, resume: bool = False, images_per_shard: int = 64,
          patch_size: int | None = None, min_size_policy: str = "skip", min_side: int = 32,
          flips: bool = True, hr_format: str = "png", lr_format: str = "png", jpg_quality: int = 95,
          batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "auto",
          executor: str = "ray", cpus_per_worker: float | None = None, max_retries: int = 2,
          storage_options: dict | None = None, storage_config: storage.StorageConfig | None = None,
          progress: bool = True) -> SynthResult:
    """Synthesize LR/HR pair shards from ``source`` into ``out/<dataset-id>/``.

    Returns a :class:`SynthResult`; ``result.ok`` is True iff every shard is committed, confirmed
    in the store, and the manifest is written.  Raises :class:`SourceError`/:class:`JobError` for
    unusable inputs (including an output that cannot be reached before any work starts).
    ``storage_config`` (timeouts, retries, deadline) defaults to ``StorageConfig.from_env()``.
    """
    scfg = storage_config or storage.StorageConfig.from_env()
    cfg = resolve_degradation(preset, config)
    scale = int(cfg.scale)
    size = int(patch_size or cfg.hr_size)
    if size % scale:
        raise JobError(f"patch size {size} is not divisible by the degradation scale {scale}")
    if views < 1:
        raise JobError("--views must be >= 1")
    if images_per_shard < 1:
        raise JobError("images per shard must be >= 1")
    pcfg = PatchConfig(size=size, per_image=patches_per_image, min_size_policy=min_size_policy,
                       min_side=min_side, flips=flips)
    enc = EncodeConfig(hr_format=hr_format, lr_format=lr_format, jpg_quality=jpg_quality)
    t_list = time.perf_counter()
    listing = list_source(source, storage_options, min_side=size)
    t_list = time.perf_counter() - t_list

    identity = {
        "listing_sha256": listing.digest(), "inputs": len(listing.items),
        "degradation": {"name": cfg.name, "fingerprint": cfg.fingerprint()},
        "patch": pcfg.to_dict(), "encode": enc.to_dict(), "seed": int(seed), "views": int(views),
        "images_per_shard": int(images_per_shard), "max_pixels": int(max_pixels),
        "code_version": code_version(),
    }
    ds_id = dataset_id(identity, cfg.name)
    chash = config_hash(identity)
    out_url = storage.normalize(out)
    ds_url = storage.join(out_url, ds_id)
    n_shards = (len(listing.items) + images_per_shard - 1) // images_per_shard
    names = [shard_name(i) for i in range(n_shards)]
    job = {"dataset_id": ds_id, "config_hash": chash, "identity": identity, "shards": names,
           "scale": scale, "hr_size": size, "degradation_name": cfg.name,
           "degradation_config": cfg.to_dict(), "source": listing.summary()}

    # 3. already there?
    man = _read(storage.join(ds_url, MANIFEST_NAME), storage_options, scfg)
    if man is not None:
        if man.get("config_hash") != chash:
            raise JobError(f"{storage.redact(ds_url)} holds a different dataset (config hash mismatch); "
                           "refusing to touch it")
        log.info("synth: dataset %s already complete; nothing to do", ds_id)
        return SynthResult(ds_url, ds_id, "reused", n_shards, manifest=man)

    # 4. plan / resume
    existing = _read(storage.join(ds_url, "job.json"), storage_options, scfg)
    if existing is not None:
        if existing.get("config_hash") != chash:
            raise JobError(f"{storage.redact(ds_url)} belongs to another job (config hash mismatch); refusing "
                           "to overwrite it")
        if not resume:
            raise JobError(f"an unfinished run of this job exists at {storage.redact(ds_url)}; pass --resume "
                           "(resume=True) to continue it")
    else:
        try:
            storage.makedirs(ds_url, storage_options)
            storage.write_bytes(storage.join(ds_url, "job.json"), pretty_json(job), storage_options, config=scfg)
        except (OSError, ValueError) as exc:
            raise JobError(f"cannot write to output {storage.redact(out_url)}: {type(exc).__name__}: "
                           f"{storage.redact(str(exc))}") from None
    if not storage.is_s3(ds_url):
        storage.remove_stale_tmp(ds_url, storage_options)
    done = _committed(ds_url, names, storage_options, scfg) if existing is not None else {}
    items = list(enumerate(listing.items))
    tasks = [ShardTask(i, names[i], items[i * images_per_shard:(i + 1) * images_per_shard])
             for i in range(n_shards) if names[i] not in done]

    spec = JobSpec(dataset_url=ds_url, degradation=cfg, patch=pcfg, patch_size=size, encode=enc, seed=int(seed),
                   views=int(views), code_version=identity["code_version"], batch_size=batch_size,
                   max_pixels=max_pixels, storage_options=storage_options, storage_config=scfg)
    fresh: dict[str, dict] = {}
    report = _run(spec, tasks, fresh, executor=executor, workers=workers, ray_address=ray_address, device=device,
                  cpus_per_worker=cpus_per_worker, max_retries=max_retries, progress=progress)

    # 5. commit the dataset: stats of shards done before this run + those just returned by workers
    stats = {**done, **fresh}
    missing = [n for n in names if n not in stats]
    if missing:
        failed = dict(report.failed)
        for n in missing:
            failed.setdefault(n, "not committed")
        return SynthResult(ds_url, ds_id, "failed", n_shards, report.done, failed)
    manifest, problems = _commit_dataset(ds_url, job, stats, storage_options, scfg)
    if manifest is None:
        return SynthResult(ds_url, ds_id, "failed", n_shards, report.done, problems)
    timings = {"listing": t_list, "startup": report.startup_s, "run": report.run_s}
    return SynthResult(ds_url, ds_id, "resumed" if existing is not None else "created", n_shards,
                       report.done, {}, manifest, timings)


def _commit_dataset(ds_url: str, job: dict, stats: dict[str, dict], storage_options: dict | None,
                    scfg: storage.StorageConfig) -> tuple[dict | None, dict[str, str]]:
    """Write ``manifest.json`` once the store reports every shard with its recorded size.

    Returns ``(manifest, {})``, or ``(None, {object: problem})`` with no manifest written.
    """
    try:
        problems = unconfirmed_shards(ds_url, stats, storage_options, config=scfg)
        if problems:
            return None, problems
        manifest = build_manifest(job, stats)
        storage.write_bytes(storage.join(ds_url, MANIFEST_NAME), pretty_json(manifest), storage_options,
                            config=scfg)
    except storage.StorageError as exc:
        return None, {"manifest.json": str(exc)}
    return manifest, {}


def _committed(ds_url: str, names: list[str], storage_options: dict | None,
               scfg: storage.StorageConfig) -> dict[str, dict]:
    """:func:`committed_shards`, with a store that cannot be read turned into a :class:`JobError`."""
    try:
        return committed_shards(ds_url, names, storage_options, config=scfg)
    except storage.StorageError as exc:
        raise JobError(f"cannot read the shards already written: {exc}") from None


def _read(url: str, storage_options: dict | None, scfg: storage.StorageConfig) -> dict | None:
    try:
        return read_json(url, storage_options, config=scfg)
    except PermissionError as exc:
        raise JobError(f"cannot read {storage.redact(url)}: access denied ({exc})") from None
    except OSError as exc:
        raise JobError(f"cannot reach {storage.redact(url)}: {type(exc).__name__}: {storage.redact(str(exc))}") from None


def _cluster_default_workers(device: str) -> int:
    """One worker per GPU when the cluster has GPUs (and they are wanted), else one per core."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus if gpus >= 1 and device != "cpu" else default_workers()


def _run(spec: JobSpec, tasks: list[ShardTask], fresh: dict[str, dict], *, executor: str, workers: int | None, ray_address: str | None,
         device: str, cpus_per_worker: float | None, max_retries: int, progress: bool):
    from tqdm import tqdm

    from .execution import RunReport

    if not tasks:
        return RunReport([], {}, [])
    total_inputs = sum(len(t.items) for t in tasks)
    bar = tqdm(total=total_inputs, unit="img", desc="synth", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    samples = [0]

    def on_done(task: ShardTask, stats: dict) -> None:
        samples[0] += stats["count"]
        fresh[task.name] = stats
        done.append(task.name)
        bar.set_postfix(pairs=samples[0], shards=f"{len(done)}/{len(tasks)}", refresh=False)
        bar.update(len(task.items))

    done: list[str] = []
    try:
        if executor == "inline":
            return InlineExecutor(spec, device=device, max_retries=max_retries).run(tasks, on_done)
        if executor != "ray":
            raise JobError(f"unknown executor {executor!r} (ray or inline)")
        started = init_ray(ray_address, num_cpus=None if ray_address else max((os.cpu_count() or 1), workers or 1) + 1)
        n = workers or _cluster_default_workers(device)
        try:
            return RayExecutor(spec, n, device=device, cpus_per_worker=cpus_per_worker,
                               max_retries=max_retries).run(tasks, on_done)
        finally:
            if started:
                shutdown_ray()
    finally:
        bar.close()


__all__ = ["synth", "SynthResult", "JobError", "SourceError", "resolve_degradation"]
