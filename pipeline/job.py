"""The synth job: plan (list, identify, split into shards), skip what is done, run, commit.

``synth()`` is the Python API behind ``pairforge synth``.  Life of a job:

1. resolve the degradation config and list the source (sorted, content-hashed);
2. compute the dataset id from everything that determines the output bytes; the dataset lives
   at ``OUT/<id>/`` — another config gets another folder and can never overwrite this one;
3. if ``manifest.json`` is there, the dataset already exists: return it, do no work;
4. otherwise take the dataset's lock (``synth.lock``: an ``flock`` locally, a lease object on
   S3; see :func:`_hold`) — a second job into the same dataset while one is alive raises
   :class:`runlock.Locked` naming the holder instead of doing all the work again — and write ``job.json`` (the plan), and run every shard whose commit marker is missing
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
Ctrl-C raises :class:`JobInterrupted` (a ``KeyboardInterrupt``) saying how many shards were kept.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from pairforge import runlock
from pairforge.errors import UsageError

from . import storage
from .execution import InlineExecutor, RayExecutor, RunReport, init_ray, shutdown_ray
from .identity import config_hash, dataset_id
from .patching import PatchConfig
from .shards import (
    MANIFEST_NAME,
    PIPELINE_VERSION,
    build_manifest,
    committed_shards,
    pretty_json,
    read_json,
    shard_name,
    stats_name,
    unconfirmed_shards,
)
from .sources import Listing, SourceError, list_source
from .synth_config import DEFAULT_PRESET, DatasetConfig, RunConfig, SynthConfig
from .worker import JobSpec, ShardTask

log = logging.getLogger(__name__)


class JobError(UsageError, RuntimeError):
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


@dataclass(frozen=True)
class _Store:
    """How this job reaches its output: the fsspec options and the bounded-retry policy."""

    options: dict | None
    config: storage.StorageConfig


@dataclass(frozen=True)
class JobPlan:
    """Everything decided before any work: the dataset's identity, its folder and its shards."""

    out_url: str                # OUT, normalized
    url: str                    # OUT/<dataset id>
    job: dict                   # job.json: identity, shard names, degradation, source summary
    degradation: Any            # the resolved DegradationConfig
    patch: PatchConfig          # with the patch size resolved
    listing: Listing
    listing_seconds: float

    @property
    def dataset_id(self) -> str:
        return self.job["dataset_id"]

    @property
    def config_hash(self) -> str:
        return self.job["config_hash"]

    @property
    def shard_names(self) -> list[str]:
        return self.job["shards"]

    def tasks(self, images_per_shard: int, done: dict[str, dict]) -> list[ShardTask]:
        """One task per shard not in ``done``, each with its slice of the listing."""
        items = list(enumerate(self.listing.items))
        return [ShardTask(i, name, items[i * images_per_shard:(i + 1) * images_per_shard])
                for i, name in enumerate(self.shard_names) if name not in done]


def resolve_degradation(degradation: Any = None):
    """A DegradationConfig from an object, a YAML path, or a preset name (default: the default preset)."""
    from pairforge.degradations import load_preset

    if degradation is not None and not isinstance(degradation, (str, os.PathLike)):
        return degradation
    name = str(degradation or DEFAULT_PRESET)
    try:
        return load_preset(name)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise JobError(f"dataset.degradation: unknown degradation preset/config {name!r}: {exc}") from None


def code_version() -> dict:
    from pairforge import degradations

    return {"pipeline": PIPELINE_VERSION, "degradations": str(getattr(degradations, "__version__", "?"))}


def default_workers() -> int:
    """One CPU worker per core: each degrades on one torch thread (worker.CPU_TORCH_THREADS), so the
    worker count is the job's parallelism and the cores are not oversubscribed."""
    return max(1, os.cpu_count() or 1)


def synth(source: str, out: str, config: SynthConfig | None = None, *, storage_options: dict | None = None,
          storage_config: storage.StorageConfig | None = None) -> SynthResult:
    """Synthesize LR/HR pair shards from ``source`` into ``out/<dataset-id>/``.

    ``config`` (default ``SynthConfig()``) says what dataset to make (``config.dataset``, which
    decides its id) and how to run the job (``config.run``).  Returns a :class:`SynthResult`;
    ``result.ok`` is True iff every shard is committed, confirmed in the store, and the manifest
    is written.  Raises :class:`SourceError`/:class:`JobError` for unusable inputs (including an
    output that cannot be reached before any work starts).  ``storage_config`` (timeouts, retries,
    deadline) defaults to ``StorageConfig.from_env()``.
    """
    config = config or SynthConfig()
    store = _Store(storage_options, storage_config or storage.StorageConfig.from_env())
    plan = plan_job(source, out, config.dataset, storage_options)
    if not plan.shard_names:  # nothing to make: write nothing either, so nothing blocks the next run
        raise SourceError(f"source {plan.listing.spec!r} has no usable inputs "
                          f"(left out: {plan.listing.skipped_by_reason() or 'none'})")
    manifest = _read(storage.join(plan.url, MANIFEST_NAME), store)
    if manifest is not None:
        return _reuse(plan, manifest)
    with _hold(plan, store):
        manifest = _read(storage.join(plan.url, MANIFEST_NAME), store)  # the holder we waited for finished it
        if manifest is not None:
            return _reuse(plan, manifest)
        return _make(plan, config, store)


def _make(plan: JobPlan, config: SynthConfig, store: _Store) -> SynthResult:
    """Claim the folder, run the shards it lacks, commit; Ctrl-C becomes :class:`JobInterrupted`."""
    done: dict[str, dict] = {}
    progress = None
    try:
        resumed = _claim_folder(plan, config.run.resume, store)
        done = _committed(plan, store) if resumed else {}
        tasks = plan.tasks(config.dataset.images_per_shard, done)
        progress = _Progress(tasks, config.run.progress)
        try:
            report = _run(_job_spec(plan, config, store), tasks, config.run, progress.on_done,
                          _store_probe(plan, store))
        finally:
            progress.close()
        return _finish(plan, {**done, **progress.stats}, report, resumed, store)
    except KeyboardInterrupt as exc:
        if isinstance(exc, JobInterrupted):
            raise
        known = len(done) + (len(progress.stats) if progress else 0)
        raise JobInterrupted(plan.url, plan.dataset_id, _count_committed(plan, store, known),
                             len(plan.shard_names)) from None


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a job that had claimed its dataset folder.

    A KeyboardInterrupt still (code that stops on Ctrl-C keeps doing so), carrying what was
    kept: ``committed`` of ``total`` shards are in the store with their commit markers, and
    ``--resume`` (``run.resume``) continues from there.
    """

    def __init__(self, url: str, dataset_id: str, committed: int, total: int):
        super().__init__(f"interrupted: {committed} of {total} shards committed in {storage.redact(url)}")
        self.url, self.dataset_id, self.committed, self.total = url, dataset_id, committed, total


def _count_committed(plan: JobPlan, store: _Store, known: int) -> int:
    """Shards whose commit marker is in the store (workers may have committed some the driver
    had not heard of yet); ``known`` when the store cannot be listed quickly."""
    quick = dataclasses.replace(store.config, attempts=1)
    try:
        names = set(storage.listdir(plan.url, store.options, config=quick))
    except Exception:  # noqa: BLE001 - a count for a message; never a reason for a traceback
        return known
    return max(known, sum(stats_name(n) in names for n in plan.shard_names))


#: what a running synth holds in its dataset folder: a lock file (local) or lease object (S3)
LOCK_NAME = "synth.lock"


@contextlib.contextmanager
def _hold(plan: JobPlan, store: _Store) -> Iterator[None]:
    """Hold the dataset folder for this job, or raise :class:`runlock.Locked` naming its holder.

    Locally an ``flock`` on ``DATASET/synth.lock`` (released by the kernel however the process
    dies; the emptied file stays). On S3 a lease object at the same name, renewed every
    ``runlock.HEARTBEAT_S`` and deleted at the end; one whose holder has not renewed it for
    ``runlock.STALE_AFTER_S`` (or whose process on this host is gone) is taken over.
    See pairforge/runlock.py.
    """
    lock_url = storage.join(plan.url, LOCK_NAME)
    try:
        if storage.is_s3(plan.url):
            lock = runlock.acquire_lease(_lease_store(lock_url, store), storage.redact(plan.url),
                                         storage.redact(lock_url), what="dataset")
        else:
            lock = runlock.acquire(storage.get_fs(plan.url, store.options)[1], lock_name=LOCK_NAME, what="dataset")
    except (OSError, storage.StorageError) as exc:
        raise JobError(f"cannot write to output {storage.redact(plan.out_url)}: {type(exc).__name__}: "
                       f"{storage.redact(str(exc))}") from None
    note = lock.takeover_note()
    if note:
        log.warning("synth: %s", note)
    try:
        yield
    finally:
        lock.release()


def _lease_store(url: str, store: _Store) -> runlock.LeaseStore:
    """The lease object at ``url``, through this job's storage options and retry policy."""

    def read() -> bytes | None:
        try:
            return storage.read_bytes(url, store.options, config=store.config)
        except FileNotFoundError:
            return None

    return runlock.LeaseStore(read=read,
                              write=lambda data: storage.write_bytes(url, data, store.options, config=store.config),
                              delete=lambda: storage.remove(url, store.options, config=store.config))


def plan_job(source: str, out: str, dataset: DatasetConfig, storage_options: dict | None = None) -> JobPlan:
    """List the source and compute the dataset id from everything that determines the output bytes."""
    degradation = resolve_degradation(dataset.degradation)
    patch = _resolved_patch(dataset.patch, degradation)
    t_list = time.perf_counter()
    listing = list_source(source, storage_options, min_side=patch.size)
    t_list = time.perf_counter() - t_list
    identity = _identity(dataset, degradation, patch, listing)
    ds_id = dataset_id(identity, degradation.name)
    n_shards = (len(listing.items) + dataset.images_per_shard - 1) // dataset.images_per_shard
    job = {"dataset_id": ds_id, "config_hash": config_hash(identity), "identity": identity,
           "shards": [shard_name(i) for i in range(n_shards)], "scale": int(degradation.scale),
           "hr_size": patch.size, "degradation_name": degradation.name,
           "degradation_config": degradation.to_dict(), "source": listing.summary()}
    out_url = storage.normalize(out)
    return JobPlan(out_url, storage.join(out_url, ds_id), job, degradation, patch, listing, t_list)


def _resolved_patch(patch: PatchConfig, degradation: Any) -> PatchConfig:
    """``patch`` with its size filled in (the degradation's ``hr_size`` when unset) and checked."""
    size = int(patch.size or degradation.hr_size)
    scale = int(degradation.scale)
    if size % scale:
        raise JobError(f"dataset.patch.size: patch size {size} is not divisible by the degradation scale {scale}")
    return replace(patch, size=size)


def _identity(dataset: DatasetConfig, degradation: Any, patch: PatchConfig, listing: Listing) -> dict:
    """What the dataset id hashes.  Frozen: any change here changes every dataset id."""
    return {
        "listing_sha256": listing.digest(), "inputs": len(listing.items),
        "degradation": {"name": degradation.name, "fingerprint": degradation.fingerprint()},
        "patch": patch.to_dict(), "encode": dataset.encode.to_dict(), "seed": int(dataset.seed),
        "views": int(dataset.views), "images_per_shard": int(dataset.images_per_shard),
        "max_pixels": int(dataset.max_pixels), "code_version": code_version(),
    }


def _reuse(plan: JobPlan, manifest: dict) -> SynthResult:
    """The dataset is already complete: return it, after checking it is this job's."""
    if manifest.get("config_hash") != plan.config_hash:
        raise JobError(f"{storage.redact(plan.url)} holds a different dataset (config hash mismatch); "
                       "refusing to touch it")
    log.info("synth: dataset %s already complete; nothing to do", plan.dataset_id)
    return SynthResult(plan.url, plan.dataset_id, "reused", len(plan.shard_names), manifest=manifest)


def _claim_folder(plan: JobPlan, resume: bool, store: _Store) -> bool:
    """Write ``job.json`` into a new dataset folder, or accept an unfinished run of this job when
    ``resume``.  Returns True when resuming.  A run of this job that stopped before committing
    any shard (Ray did not start, the store refused every tar) left nothing to lose: it is
    started again without ``resume``."""
    job_url = storage.join(plan.url, "job.json")
    existing = _read(job_url, store)
    started = False
    if existing is not None:
        if existing.get("config_hash") != plan.config_hash:
            raise JobError(f"{storage.redact(plan.url)} belongs to another job (config hash mismatch); refusing "
                           "to overwrite it")
        started = _any_commit(plan, store)
        if started and not resume:
            raise JobError(f"an unfinished run of this job exists at {storage.redact(plan.url)}; pass --resume "
                           "(run.resume) to continue it")
    else:
        try:
            storage.makedirs(plan.url, store.options)
            storage.write_bytes(job_url, pretty_json(plan.job), store.options, config=store.config)
        except (OSError, ValueError) as exc:
            raise JobError(f"cannot write to output {storage.redact(plan.out_url)}: {type(exc).__name__}: "
                           f"{storage.redact(str(exc))}") from None
    if not storage.is_s3(plan.url):
        storage.remove_stale_tmp(plan.url, store.options)
    return started


def _any_commit(plan: JobPlan, store: _Store) -> bool:
    """Whether the dataset folder holds a shard's commit marker (its stats file)."""
    names = set(_listdir(plan.url, store))
    return any(stats_name(n) in names for n in plan.shard_names)


def _listdir(url: str, store: _Store) -> list[str]:
    try:
        return storage.listdir(url, store.options, config=store.config)
    except storage.StorageError as exc:
        raise JobError(f"cannot list {storage.redact(url)}: {exc}") from None


def _job_spec(plan: JobPlan, config: SynthConfig, store: _Store) -> JobSpec:
    """What every worker needs, from the plan (resolved degradation and patch size) and the config."""
    dataset = config.dataset
    return JobSpec(dataset_url=plan.url, degradation=plan.degradation, patch=plan.patch, encode=dataset.encode,
                   seed=int(dataset.seed), views=int(dataset.views),
                   code_version=plan.job["identity"]["code_version"], batch_size=config.run.batch_size,
                   max_pixels=dataset.max_pixels, storage_options=store.options, storage_config=store.config)


def _finish(plan: JobPlan, stats: dict[str, dict], report: RunReport, resumed: bool, store: _Store) -> SynthResult:
    """Commit the dataset when every shard is: stats of shards done before this run + those just made."""
    if not storage.is_s3(plan.url):
        # a worker killed mid-write (a lost node, an OOM kill) leaves its tar's temporary file
        # behind; the executor has stopped every worker of this run by now, so it is garbage
        storage.remove_stale_tmp(plan.url, store.options)
    missing = [n for n in plan.shard_names if n not in stats]
    n_shards = len(plan.shard_names)
    if missing:
        failed = dict(report.failed)
        for n in missing:
            failed.setdefault(n, "not committed")
        return SynthResult(plan.url, plan.dataset_id, "failed", n_shards, report.done, failed)
    manifest, problems = _commit_dataset(plan.url, plan.job, stats, store)
    if manifest is None:
        return SynthResult(plan.url, plan.dataset_id, "failed", n_shards, report.done, problems)
    timings = {"listing": plan.listing_seconds, "startup": report.startup_s, "run": report.run_s}
    return SynthResult(plan.url, plan.dataset_id, "resumed" if resumed else "created", n_shards,
                       report.done, {}, manifest, timings)


def _commit_dataset(ds_url: str, job: dict, stats: dict[str, dict],
                    store: _Store) -> tuple[dict | None, dict[str, str]]:
    """Write ``manifest.json`` once the store reports every shard with its recorded size.

    Returns ``(manifest, {})``, or ``(None, {object: problem})`` with no manifest written.
    """
    try:
        problems = unconfirmed_shards(ds_url, stats, store.options, config=store.config)
        if problems:
            return None, problems
        manifest = build_manifest(job, stats)
        storage.write_bytes(storage.join(ds_url, MANIFEST_NAME), pretty_json(manifest), store.options,
                            config=store.config)
    except storage.StorageError as exc:
        return None, {"manifest.json": str(exc)}
    return manifest, {}


def _committed(plan: JobPlan, store: _Store) -> dict[str, dict]:
    """:func:`committed_shards`, with a store that cannot be read turned into a :class:`JobError`."""
    try:
        return committed_shards(plan.url, plan.shard_names, store.options, config=store.config)
    except storage.StorageError as exc:
        raise JobError(f"cannot read the shards already written: {exc}") from None


def _read(url: str, store: _Store) -> dict | None:
    try:
        return read_json(url, store.options, config=store.config)
    except PermissionError as exc:
        raise JobError(f"cannot read {storage.redact(url)}: access denied ({exc})") from None
    except OSError as exc:
        raise JobError(f"cannot reach {storage.redact(url)}: {type(exc).__name__}: {storage.redact(str(exc))}") from None


class _Progress:
    """Collects the stats of each shard committed in this run, and shows a progress bar."""

    def __init__(self, tasks: list[ShardTask], enabled: bool) -> None:
        from tqdm import tqdm

        self.stats: dict[str, dict] = {}
        self._shards = len(tasks)
        self._samples = 0
        self._bar = tqdm(total=sum(len(t.items) for t in tasks), unit="img", desc="synth",
                         disable=not (enabled and tasks), file=sys.stderr, dynamic_ncols=True)

    def on_done(self, task: ShardTask, stats: dict) -> None:
        self._samples += stats["count"]
        self.stats[task.name] = stats
        self._bar.set_postfix(pairs=self._samples, shards=f"{len(self.stats)}/{self._shards}", refresh=False)
        self._bar.update(len(task.items))

    def close(self) -> None:
        self._bar.close()


def _cluster_default_workers(device: str) -> int:
    """One worker per GPU when the cluster has GPUs (and they are wanted), else one per core."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus if gpus >= 1 and device != "cpu" else default_workers()


def _store_probe(plan: JobPlan, store: _Store) -> Callable[[], bool]:
    """The executors' outage probe: re-write ``job.json`` with the bytes it already holds.

    A write, because a store that is throttling or restarting may still answer reads; this
    object, because it exists for the whole run and a reader sees the same bytes before and
    after (an atomic replace locally, a whole-object PUT on S3).  One try, no retries.
    """
    url, data = storage.join(plan.url, "job.json"), pretty_json(plan.job)
    return lambda: storage.takes_write(url, data, store.options, config=store.config)


def _run(spec: JobSpec, tasks: list[ShardTask], run: RunConfig, on_done: Callable[[ShardTask, dict], None],
         store_probe: Callable[[], bool] | None = None) -> RunReport:
    """Run ``tasks`` on the chosen executor; an embedded Ray started here is stopped here."""
    if not tasks:
        return RunReport([], {}, [])
    if run.executor == "inline":
        return InlineExecutor(spec, device=run.device, max_retries=run.max_retries,
                              store_probe=store_probe).run(tasks, on_done)
    started = init_ray(run.ray_address,
                       num_cpus=None if run.ray_address else max((os.cpu_count() or 1), run.workers or 1) + 1)
    try:
        return RayExecutor(spec, run.workers or _cluster_default_workers(run.device), device=run.device,
                           cpus_per_worker=run.cpus_per_worker, max_retries=run.max_retries,
                           store_probe=store_probe).run(tasks, on_done)
    finally:
        if started:
            shutdown_ray()


__all__ = ["synth", "SynthResult", "SynthConfig", "JobError", "JobInterrupted", "SourceError", "JobPlan",
           "plan_job", "resolve_degradation"]
