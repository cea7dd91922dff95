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
from typing import Any

import numpy as np

from . import storage
from .decode import DEFAULT_MAX_PIXELS, SkipInput, decode_image
from .patching import PatchConfig, Patcher
from .shards import EncodeConfig, encode_sample, write_shard, write_stats
from .sources import SourceItem, image_key

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything a worker needs to produce any shard of one dataset (picklable, no handles)."""

    dataset_url: str
    degradation: Any                # degradations.DegradationConfig
    patch: PatchConfig
    patch_size: int
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


#: torch intra-op threads on CPU.  Fixed (not "cores / workers") on purpose: the degradation
#: engine's float results can differ in the last bit with the thread count, which a JPEG step
#: can amplify into different bytes — and shards must not depend on the worker count.
#: Parallelism comes from more workers (one per core) instead.
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


class _Timer:
    """Thread-safe accumulation of per-stage seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.t: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.t[stage] = self.t.get(stage, 0.0) + seconds


_END = object()


class ShardProcessor:
    """Holds the Degrader and thread pools; ``process(task)`` writes and commits one shard."""

    def __init__(self, spec: JobSpec, device: str = "auto", torch_threads: int | None = None):
        import torch

        from pairforge.degradations import Degrader

        self.spec = spec
        self.device = resolve_device(device)
        self._torch_threads = int(torch_threads or CPU_TORCH_THREADS) if (torch_threads or self.device == "cpu") else None
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        self.degrader = Degrader(spec.degradation, device=self.device)
        self.patcher = Patcher(spec.patch, spec.patch_size)
        self.patcher.warm_up()  # import albumentations (~3 s) now, not inside the first shard's timings
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

        return {"device": self.device, "host": socket.gethostname(), "pid": os.getpid(),
                "torch_threads": torch.get_num_threads()}

    # -------------------------------------------------------------- stage functions
    def _load(self, idx: int, item: SourceItem, timer: _Timer) -> tuple[list, dict] | SkipInput:
        """Read + decode + patch one image (runs in a decode thread).

        A read that still fails when the storage retries run out (:class:`storage.StorageError`)
        fails the shard instead of skipping the input: skipping it would make the shard's bytes
        depend on the network, and a store that is down must stop the job, not empty it.
        """
        spec = self.spec
        try:
            t0 = time.perf_counter()
            try:
                data = storage.read_bytes(item.url, spec.storage_options, offset=item.offset, size=item.size,
                                          config=spec.storage_config)
            except FileNotFoundError:
                raise SkipInput("missing", "file not found") from None
            except storage.StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - refused for good (e.g. access denied): skip the input
                raise SkipInput("read_error", f"{type(exc).__name__}: {storage.redact(str(exc))}"[:160]) from None
            t1 = time.perf_counter()
            img, info = decode_image(data, spec.max_pixels)
            del data
            t2 = time.perf_counter()
            patches = self.patcher.patches(img, image_key(idx), spec.seed)
            t3 = time.perf_counter()
            timer.add("read", t1 - t0)
            timer.add("decode", t2 - t1)
            timer.add("patch", t3 - t2)
            return patches, info
        except SkipInput as skip:
            return skip
        except storage.StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one file never kills the shard
            return SkipInput("error", f"{type(exc).__name__}: {exc}"[:160])

    def _degrade(self, batch: list[tuple[str, np.ndarray, dict, SourceItem, int, dict]], timer: _Timer):
        import torch

        spec = self.spec
        k = spec.views
        hr = np.stack([b[1] for b in batch])
        keys = [f"{b[0]}_v{v}" for b in batch for v in range(k)]
        hr_t = torch.from_numpy(hr).permute(0, 3, 1, 2)
        if k > 1:
            hr_t = hr_t.repeat_interleave(k, dim=0)
        hr_t = hr_t.contiguous()
        with self._degrade_lock:
            if self._torch_threads and torch.get_num_threads() != self._torch_threads:
                torch.set_num_threads(self._torch_threads)  # OpenMP settings can be per calling thread
            t0 = time.perf_counter()
            with torch.inference_mode():
                lr_t, records = self.degrader(hr_t.to(self.device), keys=keys, seed=spec.seed)
            lr = lr_t.permute(0, 2, 3, 1).contiguous().cpu().numpy()
            timer.add("degrade", time.perf_counter() - t0)
        return hr, lr, records

    def _encode(self, entry, hr: np.ndarray, lrs: list[np.ndarray], records: list[dict], timer: _Timer) -> dict:
        key, _, pmeta, item, idx, dinfo = entry
        spec = self.spec
        t0 = time.perf_counter()
        meta = {
            "key": key,
            "seed": spec.seed,
            "code_version": spec.code_version,
            "degradation": getattr(spec.degradation, "name", None),
            "scale": int(spec.degradation.scale),
            "source": {"name": item.name, "content": item.content, "index": idx, "decode": dinfo},
            "patch": pmeta,
            "views": records,
        }
        sample = encode_sample(key, hr, lrs, meta, spec.encode)
        timer.add("encode", time.perf_counter() - t0)
        return sample

    # -------------------------------------------------------------- the shard
    def process(self, task: ShardTask) -> dict:
        """Write ``task``'s tar, then its stats file (the commit marker); return the stats."""
        spec = self.spec
        timer = _Timer()
        t_start = time.perf_counter()
        skipped: list[dict] = []
        images_ok = 0
        k = spec.views

        encoded: queue.Queue = queue.Queue(maxsize=max(2, 2 * spec.batch_size))
        abort = threading.Event()

        def samples():
            while True:
                fut = encoded.get()
                if abort.is_set():  # never let an aborted shard end as a complete-looking tar
                    raise RuntimeError("shard aborted")
                if fut is _END:
                    return
                yield fut.result()

        url = storage.join(spec.dataset_url, task.name)
        writer_pool = ThreadPoolExecutor(1, thread_name_prefix="pf-write")
        writer: Future = writer_pool.submit(write_shard, url, samples(), spec.storage_options,
                                            config=spec.storage_config)

        def put(fut: Future) -> None:
            while True:
                if writer.done():  # writer failed early: surface its error instead of blocking
                    writer.result()
                    raise RuntimeError("writer stopped")
                try:
                    encoded.put(fut, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def flush(batch):
            hr, lr, records = self._degrade(batch, timer)
            for i, entry in enumerate(batch):
                lrs = [lr[i * k + v] for v in range(k)]
                recs = records[i * k:(i + 1) * k]
                put(self.encode_pool.submit(self._encode, entry, hr[i], lrs, recs, timer))

        try:
            lookahead = max(2, spec.decode_threads * 2)
            pending: deque = deque()
            items = iter(task.items)
            batch: list = []

            def refill() -> None:
                while len(pending) < lookahead:
                    nxt = next(items, None)
                    if nxt is None:
                        return
                    idx, item = nxt
                    pending.append((idx, item, self.decode_pool.submit(self._load, idx, item, timer)))

            refill()
            while pending:
                idx, item, fut = pending.popleft()
                res = fut.result()
                refill()
                if isinstance(res, SkipInput):
                    skipped.append({"index": idx, "name": item.name, "reason": res.reason, "detail": res.detail})
                    continue
                patches, dinfo = res
                images_ok += 1
                for key, arr, pmeta in patches:
                    batch.append((key, arr, pmeta, item, idx, dinfo))
                    if len(batch) >= spec.batch_size:
                        flush(batch)
                        batch = []
            if batch:
                flush(batch)
            put(_END)  # type: ignore[arg-type]
            result = writer.result()
        except BaseException:
            abort.set()  # the writer raises on its next item, which discards the partial tar
            with contextlib.suppress(Exception):
                encoded.put_nowait(_END)
            with contextlib.suppress(Exception):
                writer.result(timeout=30)
            raise
        finally:
            writer_pool.shutdown(wait=False)

        wall = time.perf_counter() - t_start
        stats = {
            "status": "committed",
            "shard": task.name,
            "index": task.index,
            "count": result.count,
            "inputs": len(task.items),
            "images_ok": images_ok,
            "skipped": skipped,
            "bytes": result.bytes,
            "sha256": result.sha256,
            "views": k,
            "timings": {**{s: round(v, 4) for s, v in sorted(timer.t.items())},
                        "write": round(result.write_seconds, 4), "upload": round(result.upload_seconds, 4),
                        "wall": round(wall, 4)},
            "worker": self.info(),
        }
        # the commit marker: only now, after write_shard returned with the tar confirmed in the store
        write_stats(spec.dataset_url, task.name, stats, spec.storage_options, config=spec.storage_config)
        return stats

