"""Training data: stream pairforge shards to every rank and dataloader worker, equally.

How the stream is built (one "slot" = one dataloader worker of one rank; S = ranks × workers):

1. **Plan.** The manifest's per-shard sample counts are known up front. When there are fewer
   shards than slots, each shard is cut into ``k = ceil(S / n_shards)`` interleaved parts
   (part j keeps the samples with index ≡ j mod k), so every slot gets data. Parts are
   assigned to slots greedily (largest first, to the least-loaded slot). The plan depends
   only on the manifest, S and nothing else, so every process computes the same plan.
2. **Endless, deterministic per-slot streams.** A slot reads its parts pass after pass; each
   pass visits its parts in an order drawn from ``(seed, slot, pass)`` and shuffles samples
   inside consecutive windows of ``shuffle_window`` samples with ``(seed, slot, pass, part,
   window)``. The stream never ends, so no rank can run out of data and hang in a collective:
   every rank takes exactly ``steps × grad_accum`` batches, each from one worker in
   round-robin order (torch's in-order DataLoader), so all ranks see equal sample counts.
3. **Resumable position.** The data position is the number of batches a rank has consumed.
   Worker w of a rank produced batches w, w+W, …, so it skips exactly ``len(range(w, n, W)) × B``
   samples of its stream (after a resume, loader worker i plays worker (i + n) mod W, since
   the DataLoader's round-robin restarts at worker 0) — arithmetically over whole parts (from the manifest counts), then
   by reading (not decoding) at most one part's worth of tar members.
4. **Per sample.** One LR view is picked with a counter-based RNG seeded by
   ``(seed, key, pass)``; an optional aligned random crop (same RNG); the LR is upsampled
   bicubically to the HR size (generator input). Tensors are float32 in [0, 1].

**Epoch coverage.** An "epoch" is ``N = Σ counts`` samples over all ranks. A slot's pass covers
each of its samples exactly once; slots' totals differ by at most one part's count (greedy
plan), so within one epoch some samples of a slot with fewer samples are seen twice and
some of a fuller slot wait for the next epoch. Over many epochs every sample of slot s is
seen at a rate ∝ 1 / total(s); with many similar shards per slot this is ≈ uniform. The
plan (and therefore the order) changes if the number of ranks or workers changes; resume
with the same ranks × workers to continue the exact same sample order.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


# --------------------------------------------------------------------------- RNG
def _int(x) -> int:
    if isinstance(x, (int, np.integer)):
        return int(x) & 0xFFFFFFFF
    return int.from_bytes(hashlib.blake2b(str(x).encode(), digest_size=4).digest(), "little")


def sample_rng(*parts) -> np.random.Generator:
    """Counter-based generator from any mix of ints and strings (Philox keyed by a hash)."""
    key = int.from_bytes(hashlib.blake2b(repr(tuple(_int(p) for p in parts)).encode(),
                                         digest_size=16).digest(), "little")
    return np.random.Generator(np.random.Philox(key=key))


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Part:
    shard: str     # shard name in the manifest
    stride: int    # keep samples with index % stride == offset
    offset: int
    count: int


def plan_parts(shards: list[dict], n_slots: int) -> list[list[Part]]:
    """Assign (parts of) shards to ``n_slots`` slots, balancing sample counts."""
    shards = [s for s in shards if int(s["count"]) > 0]
    if not shards:
        raise ValueError("the dataset has no samples to train on")
    k = max(1, math.ceil(n_slots / len(shards)))
    parts = []
    for s in shards:
        c = int(s["count"])
        for j in range(k):
            n = len(range(j, c, k))
            if n:
                parts.append(Part(s["name"], k, j, n))
    if len(parts) < n_slots:
        raise ValueError(f"the dataset has {sum(int(s['count']) for s in shards)} training samples, fewer "
                         f"than ranks × dataloader workers = {n_slots}; use fewer ranks/workers")
    slots: list[list[Part]] = [[] for _ in range(n_slots)]
    load = [0] * n_slots
    for p in sorted(parts, key=lambda p: (-p.count, p.shard, p.offset)):
        i = min(range(n_slots), key=lambda s: (load[s], s))
        slots[i].append(p)
        load[i] += p.count
    return slots


def split_train_val(manifest: dict, val_shards: int, has_val_data: bool) -> tuple[list[dict], list[dict]]:
    shards = list(manifest["shards"])
    if has_val_data or val_shards == 0:
        return shards, []
    if len(shards) <= val_shards:
        raise ValueError(f"data.val_shards={val_shards} but the dataset has only {len(shards)} shard(s); "
                         "pass a separate validation dataset (data.val_data / --val-data) or set val_shards: 0")
    return shards[:-val_shards], shards[-val_shards:]


# --------------------------------------------------------------------------- reading
def _raw_samples(dataset_url: str, shard: str, storage_options: dict | None) -> Iterator[dict]:
    """Raw (undecoded) samples of one shard in stored order, read by *this* process only.

    ``pipeline.read_pairs`` splits its shard list across dataloader workers itself; a slot
    here owns explicit shards, so we open the shard with webdataset without any splitter and
    decode with the pipeline's safe decoder (``pipeline.shards.decode_sample``).
    """
    import webdataset as wds
    from pairforge.pipeline import shard_urls
    from pairforge.pipeline.storage import register_webdataset_s3

    register_webdataset_s3(storage_options)
    (url,) = shard_urls(dataset_url, [shard], storage_options)
    ds = wds.WebDataset([url], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    yield from ds


def _decode(raw: dict) -> dict | None:
    from pairforge.pipeline.shards import decode_sample

    return decode_sample(raw, strict=True)


def to_tensors(sample: dict, view: int, crop: int | None, rng: np.random.Generator | None) -> dict:
    """HWC uint8 HR + chosen LR view → {'hr', 'lr_up', 'key'} float tensors in [0, 1]."""
    hr, lr = sample["hr"], sample["lr"][view]
    scale = hr.shape[0] // lr.shape[0]
    if crop is not None and (hr.shape[0] > crop or hr.shape[1] > crop):
        if crop % scale:
            raise ValueError(f"data.crop_size={crop} is not a multiple of the dataset scale {scale}")
        lc = crop // scale
        if rng is None:
            y0, x0 = (lr.shape[0] - lc) // 2, (lr.shape[1] - lc) // 2
        else:
            y0, x0 = int(rng.integers(0, lr.shape[0] - lc + 1)), int(rng.integers(0, lr.shape[1] - lc + 1))
        lr = lr[y0:y0 + lc, x0:x0 + lc]
        hr = hr[y0 * scale:(y0 + lc) * scale, x0 * scale:(x0 + lc) * scale]
    hr_t = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1).float() / 255
    lr_t = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1).float() / 255
    lr_up = F.interpolate(lr_t[None], size=hr_t.shape[-2:], mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return {"hr": hr_t, "lr_up": lr_up, "key": sample["key"]}


class ShardStream(IterableDataset):
    """Endless per-rank stream of training samples (see the module docstring)."""

    def __init__(self, url: str, shards: list[dict], rank: int, world: int, num_workers: int,
                 batch_size: int, seed: int = 0, crop: int | None = None, shuffle_window: int = 64,
                 start_batches: int = 0, storage_options: dict | None = None):
        super().__init__()
        self.url, self.shards = url, shards
        self.rank, self.world = rank, world
        self.num_workers = max(1, num_workers)
        self.batch_size, self.seed, self.crop = batch_size, seed, crop
        self.window, self.start_batches = shuffle_window, start_batches
        self.storage_options = storage_options
        self.plan = plan_parts(shards, world * self.num_workers)

    def slot_parts(self, worker: int) -> list[Part]:
        return self.plan[self.rank * self.num_workers + worker]

    def samples_to_skip(self, worker: int) -> int:
        return len(range(worker, self.start_batches, self.num_workers)) * self.batch_size

    def _part_order(self, slot: int, parts: list[Part], p: int) -> list[Part]:
        order = sample_rng(self.seed, "pass", slot, p).permutation(len(parts))
        return [parts[i] for i in order]

    def iter_slot(self, worker: int) -> Iterator[dict]:
        slot = self.rank * self.num_workers + worker
        parts = self.slot_parts(worker)
        total = sum(p.count for p in parts)
        skip = self.samples_to_skip(worker)
        p, skip = divmod(skip, total)
        while True:
            for pi, part in enumerate(self._part_order(slot, parts, p)):
                if skip >= part.count:
                    skip -= part.count
                    continue
                yield from self._iter_part(slot, p, pi, part, skip)
                skip = 0
            p += 1

    def _iter_part(self, slot: int, p: int, pi: int, part: Part, skip: int) -> Iterator[dict]:
        first_window, skip_in = divmod(skip, self.window)
        window: list[dict] = []
        wi = first_window
        for idx, raw in enumerate(_raw_samples(self.url, part.shard, self.storage_options)):
            if idx % part.stride != part.offset:
                continue
            if idx // part.stride < first_window * self.window:
                continue  # before the resume point: read, never decoded
            window.append(raw)
            if len(window) == self.window:
                yield from self._emit(window, slot, p, pi, wi, skip_in)
                window, wi, skip_in = [], wi + 1, 0
        if window:
            yield from self._emit(window, slot, p, pi, wi, skip_in)

    def _emit(self, window: list[dict], slot: int, p: int, pi: int, wi: int, skip_in: int) -> Iterator[dict]:
        order = sample_rng(self.seed, "win", slot, p, pi, wi).permutation(len(window))
        for j in order[skip_in:]:
            yield self._prepare(window[j], p)

    def _prepare(self, raw: dict, p: int) -> dict:
        s = _decode(raw)
        rng = sample_rng(self.seed, "sample", s["key"], p)
        view = int(rng.integers(0, len(s["lr"])))
        return to_tensors(s, view, self.crop, rng)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError("ShardStream.num_workers must equal the DataLoader's num_workers")
        # the DataLoader restarts its round-robin at worker 0; after n consumed batches the next
        # batch belongs to logical worker n % W, so rotate the roles
        return self.iter_slot((physical + self.start_batches) % self.num_workers)


def _worker_init(_):
    torch.set_num_threads(1)


def make_train_loader(url: str, shards: list[dict], rank: int, world: int, batch_size: int,
                      num_workers: int, seed: int, crop: int | None, shuffle_window: int,
                      start_batches: int = 0, prefetch_factor: int = 2,
                      storage_options: dict | None = None) -> DataLoader:
    ds = ShardStream(url, shards, rank, world, num_workers, batch_size, seed, crop, shuffle_window,
                     start_batches, storage_options)
    kw = {}
    if num_workers > 0:
        # s3fs is not fork-safe once the parent has used it: start workers with forkserver
        ctx = "forkserver" if str(url).startswith(("s3://", "s3a://")) else None
        kw = dict(prefetch_factor=prefetch_factor, worker_init_fn=_worker_init,
                  multiprocessing_context=ctx, persistent_workers=False)
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, drop_last=True, **kw)


def load_val_pairs(url: str, shards: list[dict] | None, n: int, crop: int | None,
                   storage_options: dict | None = None) -> list[dict]:
    """The first ``n`` held-out pairs (LR view 0, centre crop): a fixed validation set."""
    names = [s["name"] for s in shards] if shards is not None else None
    out: list[dict] = []
    from pairforge.pipeline import load_manifest
    if names is None:
        names = [s["name"] for s in load_manifest(url, storage_options)["shards"]]
    for name in names:
        for raw in _raw_samples(url, name, storage_options):
            s = _decode(raw)
            out.append(to_tensors(s, 0, crop, None))
            if len(out) >= n:
                return out
    return out


def batch_val(pairs: list[dict], batch_size: int) -> Iterator[dict]:
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        yield {"hr": torch.stack([c["hr"] for c in chunk]), "lr_up": torch.stack([c["lr_up"] for c in chunk]),
               "key": [c["key"] for c in chunk]}


def dataset_info(url: str, storage_options: dict | None = None) -> dict:
    from pairforge.pipeline import load_manifest

    return load_manifest(url, storage_options)
