"""One shard, end to end: read → decode → patch → degrade (batched) → encode → tar → commit.

This is the unit of work a Ray actor call (or the inline executor) owns, img2dataset-style.
Inside, four stages overlap with bounded queues so the CPU-side work hides behind degradation
instead of adding to it:

    reader/decoder threads ──(≤ lookahead images)──▶ main thread: batch + Degrader
         ──(ordered futures, ≤ queue)──▶ encoder threads ──▶ writer thread (tar → storage)

Order is preserved end to end (futures are consumed in submission order), so the tar's bytes do
not depend on thread timing.  OpenCV/Pillow/zlib/torch release the GIL, which is what makes
threads (rather than more processes) enough here.  Memory is bounded by the lookahead, the
batch size and the encode queue length, independent of shard size.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from pairforge.degradations import StageTimer

from . import storage
from .decode import DEFAULT_MAX_PIXELS, SkipInput, decode_image
from .patching import DroppedPatch, Patch, PatchConfig, Patcher
from .shards import EncodeConfig, ShardResult, encode_sample, write_shard, write_stats
from .sources import SourceItem, image_key

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything a worker needs to produce any shard of one dataset (picklable, no handles)."""

    dataset_url: str
    degradation: Any                # degradations.DegradationConfig
    patch: PatchConfig              # with the patch size resolved
    encode: EncodeConfig
    seed: int
    views: int
    code_version: dict
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict | None = None
    #: the driver's timeouts/retry policy, so every worker (even on another node) follows it
    storage_config: storage.StorageConfig | None = None
    decode_threads: int = 2
    encode_threads: int = 2


@dataclass
class ShardTask:
    index: int
    name: str
    items: list[tuple[int, SourceItem]] = field(default_factory=list)  # (image index, item)


#: torch intra-op threads per CPU worker.  One, because the job's parallelism comes from running
#: one worker per core (:func:`job.default_workers`): more threads per worker would only make
#: the workers compete for the same cores.  The pixels do not depend on this number (the
#: degradation engine gives the same values with any thread count; see degradations/parallel.py).
CPU_TORCH_THREADS = 1


def resolve_device(requested: str) -> str:
    """``auto`` → cuda when this process really sees a GPU, else cpu; never wait for a GPU."""
    import torch

    if requested == "cpu":
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        log.warning("worker: a GPU was requested but CUDA sees none in this process "
                    "(CUDA_VISIBLE_DEVICES=%s); degrading on cpu", os.environ.get("CUDA_VISIBLE_DEVICES"))
    return "cuda" if has_cuda else "cpu"


# ------------------------------------------------------------------ records passed between stages
@dataclass(frozen=True)
class LoadedImage:
    """An input that was read, decoded and cut into patches (a decode thread's result)."""

    index: int             # position in the listing (its image key)
    item: SourceItem
    decode_info: dict      # the original format/mode/size and the conversions made; in each sample's JSON
    patches: list[Patch]
    dropped: list[DroppedPatch] = field(default_factory=list)  # degenerate patches, not stored


@dataclass(frozen=True)
class SkippedImage:
    """An input that gives no samples, or (``patch`` set) one patch of an input not stored, and
    why (listed in the shard's stats, counted by reason in the manifest)."""

    index: int
    name: str
    reason: str
    detail: str
    patch: str | None = None

    def to_dict(self) -> dict:
        out = {"index": self.index, "name": self.name, "reason": self.reason, "detail": self.detail}
        if self.patch is not None:
            out["patch"] = self.patch
        return out


@dataclass(frozen=True)
class BatchEntry:
    """One patch waiting for degradation, with the image it was cut from."""

    patch: Patch
    image: LoadedImage


@dataclass(frozen=True)
class DegradedBatch:
    """A batch after degradation: HR patches (N,H,W,3), LR views (N*views,h,w,3), their records."""

    hr: np.ndarray
    lr: np.ndarray
    records: list[dict]
    views: int

    def lrs(self, i: int) -> list[np.ndarray]:
        return [self.lr[i * self.views + v] for v in range(self.views)]

    def records_of(self, i: int) -> list[dict]:
        return self.records[i * self.views:(i + 1) * self.views]


@dataclass
class _Tally:
    """What one shard made of its inputs."""

    images_ok: int = 0
    skipped: list[SkippedImage] = field(default_factory=list)


_END = object()


class _OrderedShardWriter:
    """Encode futures in → one writer thread → the shard's tar, in the order they were put.

    The writer consumes the futures in submission order, so the tar's bytes do not depend on
    thread timing; the queue is bounded, so encoding cannot run ahead of writing without limit.
    On :meth:`abort` the writer raises on its next item, which discards the partial tar: an
    aborted shard never ends as a complete-looking tar.
    """

    def __init__(self, url: str, spec: JobSpec) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, 2 * spec.batch_size))
        self._aborted = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pf-write")
        self._writer: Future = self._pool.submit(write_shard, url, self._samples(), spec.storage_options,
                                                 config=spec.storage_config)

    def __enter__(self) -> "_OrderedShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        self._pool.shutdown(wait=False)

    def _samples(self) -> Iterator[dict]:
        while True:
            fut = self._queue.get()
            if self._aborted.is_set():
                raise RuntimeError("shard aborted")
            if fut is _END:
                return
            yield fut.result()

    def put(self, fut: Future | object) -> None:
        """Queue one encode future; a writer that already failed raises its error here."""
        while True:
            if self._writer.done():  # failed early: surface its error instead of blocking
                self._writer.result()
                raise RuntimeError("writer stopped")
            try:
                self._queue.put(fut, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> ShardResult:
        """No more samples: wait for the store to confirm the tar."""
        self.put(_END)
        return self._writer.result()

    def abort(self) -> None:
        self._aborted.set()
        with contextlib.suppress(Exception):
            self._queue.put_nowait(_END)  # wake a writer waiting for the next item
        with contextlib.suppress(Exception):
            self._writer.result(timeout=30)


class ShardProcessor:
    """Holds the Degrader and thread pools; ``process(task)`` writes and commits one shard."""

    def __init__(self, spec: JobSpec, device: str = "auto", torch_threads: int | None = None,
                 node: str | None = None):
        import torch

        from pairforge.degradations import Degrader

        self.spec = spec
        #: the Ray node id of the process this runs in (None inline): recorded in each shard's
        #: stats so a multi-node run says which node wrote which shard; never in the tar
        self.node = node
        self.device = resolve_device(device)
        self._torch_threads = _cpu_threads(torch_threads, self.device)
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        self.degrader = Degrader(spec.degradation, device=self.device)
        self.patcher = Patcher(spec.patch)
        self.patcher.warm_up()  # import albumentations now, so the first shard's timings measure shard work
        # process() may run for two shards at once (a threaded actor), so the tail of one shard
        # (encode/write/upload) overlaps the next shard's degradation; the degrader is shared
        # and used by one batch at a time
        self._degrade_lock = threading.Lock()
        self.decode_pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="pf-decode")
        self.encode_pool = ThreadPoolExecutor(spec.encode_threads, thread_name_prefix="pf-encode")

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.encode_pool.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict:
        import torch

        return {"device": self.device, "host": socket.gethostname(), "node": self.node, "pid": os.getpid(),
                "torch_threads": torch.get_num_threads()}

    # -------------------------------------------------------------- the shard
    def process(self, task: ShardTask) -> dict:
        """Write ``task``'s tar, then its stats file (the commit marker); return the stats."""
        spec = self.spec
        timer = StageTimer()  # host-side: the degrade stage ends in .cpu(), which waits for the GPU
        started = time.perf_counter()
        tally = _Tally()
        with _OrderedShardWriter(storage.join(spec.dataset_url, task.name), spec) as writer:
            for batch in self._batches(task, timer, tally):
                self._degrade_and_encode(batch, timer, writer)
            result = writer.finish()
        stats = self._stats(task, tally, result, timer, time.perf_counter() - started)
        # the commit marker: only now, after write_shard returned with the tar confirmed in the store
        write_stats(spec.dataset_url, task.name, stats, spec.storage_options, config=spec.storage_config)
        return stats

    def _batches(self, task: ShardTask, timer: StageTimer, tally: _Tally) -> Iterator[list[BatchEntry]]:
        """The shard's patches in listing order, ``batch_size`` at a time; counts ok and skipped inputs."""
        batch: list[BatchEntry] = []
        for image in self._loaded(task, timer):
            if isinstance(image, SkippedImage):
                tally.skipped.append(image)
                continue
            tally.images_ok += 1
            tally.skipped.extend(SkippedImage(image.index, image.item.name, d.reason, d.detail, d.key)
                                 for d in image.dropped)
            for patch in image.patches:
                batch.append(BatchEntry(patch, image))
                if len(batch) >= self.spec.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _loaded(self, task: ShardTask, timer: StageTimer) -> Iterator[LoadedImage | SkippedImage]:
        """Each input loaded on the decode threads, in listing order, a bounded number ahead."""
        lookahead = max(2, self.spec.decode_threads * 2)
        pending: deque[Future] = deque()
        try:
            for idx, item in task.items:
                pending.append(self.decode_pool.submit(self._load, idx, item, timer))
                if len(pending) > lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:  # an aborted shard stops loading what it will not use
                fut.cancel()

    def _degrade_and_encode(self, batch: list[BatchEntry], timer: StageTimer,
                            writer: _OrderedShardWriter) -> None:
        degraded = self._degrade(batch, timer)
        for i, entry in enumerate(batch):
            writer.put(self.encode_pool.submit(self._encode, entry, degraded, i, timer))

    # -------------------------------------------------------------- stage functions
    def _load(self, idx: int, item: SourceItem, timer: StageTimer) -> LoadedImage | SkippedImage:
        """Read + decode + patch one image (runs in a decode thread).

        A read that still fails when the storage retries run out (:class:`storage.StorageError`)
        fails the shard instead of skipping the input: skipping it would make the shard's bytes
        depend on the network, and a store that is down must stop the job, not empty it.
        """
        try:
            with timer.stage("read"):
                data = self._read(item)
            with timer.stage("decode"):
                img, info = decode_image(data, self.spec.max_pixels)
            del data
            with timer.stage("patch"):
                patches, dropped = self.patcher.training_patches(img, image_key(idx), self.spec.seed)
            return LoadedImage(idx, item, info, patches, dropped)
        except SkipInput as skip:
            return SkippedImage(idx, item.name, skip.reason, skip.detail)
        except storage.StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one file never kills the shard
            return SkippedImage(idx, item.name, "error", f"{type(exc).__name__}: {exc}"[:160])

    def _read(self, item: SourceItem) -> bytes:
        """The item's bytes; an input the store refuses for good becomes a :class:`SkipInput`."""
        try:
            return storage.read_bytes(item.url, self.spec.storage_options, offset=item.offset, size=item.size,
                                      config=self.spec.storage_config)
        except FileNotFoundError:
            raise SkipInput("missing", "file not found") from None
        except storage.StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - refused for good (e.g. access denied): skip the input
            raise SkipInput("read_error", f"{type(exc).__name__}: {storage.redact(str(exc))}"[:160]) from None

    def _degrade(self, batch: list[BatchEntry], timer: StageTimer) -> DegradedBatch:
        import torch

        views = self.spec.views
        hr = np.stack([entry.patch.pixels for entry in batch])
        keys = [f"{entry.patch.key}_v{v}" for entry in batch for v in range(views)]
        hr_t = torch.from_numpy(hr).permute(0, 3, 1, 2)
        if views > 1:
            hr_t = hr_t.repeat_interleave(views, dim=0)
        hr_t = hr_t.contiguous()
        with self._degrade_lock:
            if self._torch_threads and torch.get_num_threads() != self._torch_threads:
                torch.set_num_threads(self._torch_threads)  # OpenMP settings can be per calling thread
            with timer.stage("degrade"), torch.inference_mode():
                lr_t, records = self.degrader(hr_t.to(self.device), keys=keys, seed=self.spec.seed)
                lr = lr_t.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return DegradedBatch(hr, lr, records, views)

    def _encode(self, entry: BatchEntry, degraded: DegradedBatch, i: int, timer: StageTimer) -> dict:
        """The tar members of the batch's ``i``-th sample (runs in an encode thread)."""
        with timer.stage("encode"):
            meta = self._sample_meta(entry, degraded.records_of(i))
            return encode_sample(entry.patch.key, degraded.hr[i], degraded.lrs(i), meta, self.spec.encode)

    def _sample_meta(self, entry: BatchEntry, records: list[dict]) -> dict:
        """The sample's JSON: where it came from, how it was cut and how each view was degraded."""
        spec, image = self.spec, entry.image
        return {
            "key": entry.patch.key,
            "seed": spec.seed,
            "code_version": spec.code_version,
            "degradation": getattr(spec.degradation, "name", None),
            "scale": int(spec.degradation.scale),
            "source": {"name": image.item.name, "content": image.item.content, "index": image.index,
                       "decode": image.decode_info},
            "patch": entry.patch.meta,
            "views": records,
        }

    def _stats(self, task: ShardTask, tally: _Tally, result: ShardResult, timer: StageTimer, wall: float) -> dict:
        """The shard's stats file: what went in, what came out, where the time went."""
        return {
            "status": "committed",
            "shard": task.name,
            "index": task.index,
            "count": result.count,
            "inputs": len(task.items),
            "images_ok": tally.images_ok,
            "skipped": [s.to_dict() for s in tally.skipped],
            "bytes": result.bytes,
            "sha256": result.sha256,
            "views": self.spec.views,
            "timings": {**{s: round(v, 4) for s, v in sorted(timer.times.items())},
                        "write": round(result.write_seconds, 4), "upload": round(result.upload_seconds, 4),
                        "wall": round(wall, 4)},
            "worker": self.info(),
        }


def _cpu_threads(requested: int | None, device: str) -> int | None:
    """torch threads to pin: the requested count, else :data:`CPU_TORCH_THREADS` on CPU; None on GPU."""
    if requested:
        return int(requested)
    return CPU_TORCH_THREADS if device == "cpu" else None
