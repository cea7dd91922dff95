"""Training data: stream pairforge shards to every rank and dataloader worker, equally.

The stream is a chain of small stages, each a generator over the previous one's items
(``compose(source, stage, stage, …)``, the way webdataset builds a pipeline):

* **plan** — ``plan_visits``: which part of which shard a slot reads next, pass after pass;
* **read** — ``read_part``: that part's raw samples from its shard (``ShardReader``: checked
  against the manifest), ``keep_part``, ``drop`` (the resume point), ``shuffle_windows``;
* **decode** — ``decode``: the pipeline's safe decoder;
* **to tensors** — ``to_training_pairs``: one LR view, an aligned crop, LR↑ bicubic.

What the stages guarantee (one "slot" = one dataloader worker of one rank; S = ranks × workers):

1. **Plan.** The manifest's per-shard sample counts are known up front. When there are fewer
   shards than slots, each shard is cut into ``k = ceil(S / n_shards)`` interleaved parts
   (part j keeps the samples with index ≡ j mod k), so every slot gets data. Parts are
   assigned to slots greedily (largest first, to the least-loaded slot). The plan depends
   only on the manifest, S and nothing else, so every process computes the same plan.
2. **Endless, deterministic per-slot streams.** A slot reads its parts pass after pass; each
   pass visits its parts in an order drawn from ``(seed, slot, pass)`` and shuffles samples
   inside consecutive windows of ``shuffle_window`` samples with ``(seed, slot, pass, part
   position, window)``. The stream never ends, so no rank can run out of data and hang in a
   collective: every rank takes exactly ``steps × grad_accum`` batches, each from one worker
   in round-robin order (torch's in-order DataLoader), so all ranks see equal sample counts.
3. **Resumable position.** The data position is the number of batches a rank has consumed.
   Worker w of a rank produced batches w, w+W, …, so it skips exactly ``len(range(w, n, W)) × B``
   samples of its stream (after a resume, loader worker i plays worker (i + n) mod W, since
   the DataLoader's round-robin restarts at worker 0) — arithmetically over whole parts (from
   the manifest counts), then by reading (not decoding) at most one part's worth of tar members.
4. **Per sample.** One LR view is picked with a counter-based RNG seeded by
   ``(seed, key, pass)``; an optional aligned random crop (same RNG); the LR is upsampled
   bicubically to the HR size (generator input). Tensors are float32 in [0, 1].
5. **Integrity.** Every time a part's shard is opened, its size is checked against the manifest
   before reading and its sha256 over every byte read (skipped members included) when the tar
   ends; a damaged shard stops training with ``ShardIntegrityError`` naming it (there is no
   skip mode here: a slot whose shards are all skipped would never yield a batch). A part's
   whole chain runs inside its shard's reader, so a sample that fails to decode is blamed on
   the shard when the shard is damaged.

**Randomness.** Every draw above comes from the project's one seed derivation,
:class:`pairforge.degradations.rng.SampleRng`: the part order of pass p of slot s from key
``slot{s}_pass{p}``, the window shuffles from the same key (names ``part{i}_window{w}``), a
sample's view and crop from its own key (name ``view_crop_pass{p}``). The order is a pure
function of (seed, slot, pass) and the plan. Moving to this helper (from a private
hash-keyed Philox) changed the training sample order for a given seed compared with earlier
pairforge versions; no dataset byte changed.

**Epoch coverage.** An "epoch" is ``N = Σ counts`` samples over all ranks. A slot's pass covers
each of its samples exactly once; slots' totals differ by at most one part's count (greedy
plan), so within one epoch some samples of a slot with fewer samples are seen twice and
some of a fuller slot wait for the next epoch. Over many epochs every sample of slot s is
seen at a rate ∝ 1 / total(s); with many similar shards per slot this is ≈ uniform. The
plan (and therefore the order) changes if the number of ranks or workers changes; resume
with the same ranks × workers to continue the exact same sample order.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pairforge.degradations.rng import SampleRng
from pairforge.pipeline.shards import ShardReader, dataset_shard, decode_sample, load_manifest
from pairforge.training.model import pixels

#: a stage turns an iterator of items into an iterator of (other) items, lazily
Stage = Callable[[Iterator[Any]], Iterator[Any]]


# --------------------------------------------------------------------------- composing stages
def compose(source: Iterable[Any], *stages: Stage) -> Iterator[Any]:
    """``compose(src, f, g)`` is ``g(f(iter(src)))``: each item flows through the stages in order."""
    items = iter(source)
    for apply in stages:
        items = apply(items)
    return items


def stage(fn: Callable[..., Iterator[Any]]) -> Callable[..., Stage]:
    """Make ``fn(items, *args, **kw)`` a stage factory: ``fn(*args, **kw)`` is the stage, so a
    chain reads as a list of what happens (``compose(reader, keep_part(part), decode())``)."""
    @functools.wraps(fn)
    def bind(*args: Any, **kw: Any) -> Stage:
        return lambda items: fn(items, *args, **kw)
    return bind


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Part:
    shard: str     # shard name in the manifest
    stride: int    # keep samples with index % stride == offset
    offset: int
    count: int
    end: int | None = None  # samples from this index on are held out for validation


@dataclass(frozen=True)
class Visit:
    """One reading of one part: pass ``pass_`` of slot ``slot``, at ``position`` in that pass's
    part order, starting after ``skip`` samples of the part's stream (a resume point)."""
    part: Part
    slot: int
    pass_: int
    position: int
    skip: int = 0


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
                parts.append(Part(s["name"], k, j, n, s.get("end")))
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


def split_train_val(manifest: dict, val_shards: int, has_val_data: bool,
                    val_samples: int = 16) -> tuple[list[dict], list[dict]]:
    """Training and validation manifest entries: the last ``val_shards`` shards validate.

    A dataset with too few shards for that is still valid (a first try on a few photos): its
    last samples validate instead (:func:`hold_out_samples`), so training never refuses a
    dataset for its size.
    """
    shards = list(manifest["shards"])
    if has_val_data or val_shards == 0:
        return shards, []
    if len(shards) > val_shards:
        return shards[:-val_shards], shards[-val_shards:]
    return hold_out_samples(shards, val_samples)


def hold_out_samples(shards: list[dict], val_samples: int) -> tuple[list[dict], list[dict]]:
    """Hold out the last shard's last samples: ``val_samples`` of them, at most a quarter of the
    shard (at least one when it has two or more), so most of a small dataset still trains.

    The entries keep the shard's name, bytes and sha256 (it is still verified when read); a
    training entry gets ``end`` (its samples from that index on are never trained on) and the
    validation entry gets ``first`` (where its samples start).
    """
    *rest, last = shards
    count = int(last["count"])
    n = max(1, min(val_samples, count // 4)) if count >= 2 and val_samples > 0 else 0
    if n == 0:
        return shards, []
    keep = count - n
    return [*rest, {**last, "count": keep, "end": keep}], [{**last, "count": n, "first": keep}]


def pass_rng(seed: int, slot: int, pass_: int) -> SampleRng:
    """The named streams of one pass of one slot (part order, window shuffles)."""
    return SampleRng(seed, f"slot{slot}_pass{pass_}")


def part_order(seed: int, slot: int, parts: list[Part], pass_: int) -> list[Part]:
    """The order in which pass ``pass_`` of slot ``slot`` visits its parts."""
    order = pass_rng(seed, slot, pass_).numpy("part_order").permutation(len(parts))
    return [parts[i] for i in order]


def plan_visits(parts: list[Part], seed: int, slot: int, skip: int = 0) -> Iterator[Visit]:
    """The endless visits of one slot, starting ``skip`` samples into its stream."""
    pass_, skip = divmod(skip, sum(p.count for p in parts))
    while True:
        for position, part in enumerate(part_order(seed, slot, parts, pass_)):
            if skip >= part.count:
                skip -= part.count  # a whole part before the resume point: never opened
                continue
            yield Visit(part, slot, pass_, position, skip)
            skip = 0
        pass_ += 1


# --------------------------------------------------------------------------- read
@stage
def keep_part(raws: Iterator[dict], part: Part) -> Iterator[dict]:
    """The shard's samples that belong to ``part`` (index ≡ offset mod stride, before ``end``).

    Held-out samples after ``end`` are still read (and hashed, so the shard is verified), never used.
    """
    for index, raw in enumerate(raws):
        if index % part.stride == part.offset and (part.end is None or index < part.end):
            yield raw


@stage
def drop(items: Iterator[Any], n: int) -> Iterator[Any]:
    """All but the first ``n`` items; those are still pulled (a shard's bytes are still hashed)."""
    yield from itertools.islice(items, n, None)


@stage
def shuffle_windows(items: Iterator[Any], size: int, rng: SampleRng, position: int,
                    first_window: int = 0) -> Iterator[Any]:
    """Permute consecutive windows of ``size`` items; window w of the part at ``position`` of
    the pass uses ``rng``'s stream ``part{position}_window{w}``."""
    for w in itertools.count(first_window):
        window = list(itertools.islice(items, size))
        if not window:
            return
        for j in rng.numpy(f"part{position}_window{w}").permutation(len(window)):
            yield window[j]


# --------------------------------------------------------------------------- decode, to tensors
@stage
def decode(raws: Iterator[dict]) -> Iterator[dict]:
    """Raw tar samples → ``{key, hr, lr: [...], params}``; anything but pairforge's own member
    types is refused (nothing is unpickled)."""
    for raw in raws:
        yield decode_sample(raw, strict=True)


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
    hr_t, lr_t = pixels.to_float(hr), pixels.to_float(lr)
    lr_up = pixels.bicubic_input(lr_t, size=hr_t.shape[-2:])  # the generator's input, as inference makes it
    return {"hr": hr_t, "lr_up": lr_up, "key": sample["key"]}


@stage
def to_training_pairs(samples: Iterator[dict], seed: int, pass_: int, crop: int | None) -> Iterator[dict]:
    """One randomly chosen LR view and aligned random crop per sample, drawn from (seed, key, pass)."""
    for sample in samples:
        rng = SampleRng(seed, sample["key"]).numpy(f"view_crop_pass{pass_}")
        view = int(rng.integers(0, len(sample["lr"])))
        yield to_tensors(sample, view, crop, rng)


@stage
def to_validation_pairs(samples: Iterator[dict], crop: int | None) -> Iterator[dict]:
    """LR view 0 and the centre crop: the same pairs at every validation."""
    for sample in samples:
        yield to_tensors(sample, 0, crop, None)


# --------------------------------------------------------------------------- one part, one slot
def open_shard(dataset_url: str, entry: dict, storage_options: dict | None) -> ShardReader:
    """A one-pass reader of one shard's raw samples, in stored order, checked against its
    manifest ``entry`` (size before reading, sha256 of every byte read when the tar ends).

    ``pipeline.read_pairs`` splits its shard list across dataloader workers itself; a slot here
    owns explicit shards, so it opens each one itself, without a splitter.
    """
    return ShardReader(dataset_shard(dataset_url, entry), storage_options)


def read_part(visit: Visit, open_part: Callable[[Part], ShardReader], window: int, seed: int,
              crop: int | None) -> Iterator[dict]:
    """read → decode → to tensors for one visit, all inside the shard's reader: an error while
    decoding is then blamed on the shard if the shard is damaged (``ShardReader``)."""
    first_window, skip_in = divmod(visit.skip, window)
    with open_part(visit.part) as reader:
        yield from compose(
            reader,
            keep_part(visit.part),
            drop(first_window * window),  # before the resume point: read and hashed, never decoded
            shuffle_windows(window, pass_rng(seed, visit.slot, visit.pass_), visit.position, first_window),
            drop(skip_in),
            decode(),
            to_training_pairs(seed, visit.pass_, crop),
        )


@stage
def read_parts(visits: Iterator[Visit], **read_kw: Any) -> Iterator[dict]:
    """Every visit's training pairs, one visit after the other."""
    for visit in visits:
        yield from read_part(visit, **read_kw)


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
        self._entries = {s["name"]: s for s in shards}

    def slot_parts(self, worker: int) -> list[Part]:
        return self.plan[self.rank * self.num_workers + worker]

    def samples_to_skip(self, worker: int) -> int:
        return len(range(worker, self.start_batches, self.num_workers)) * self.batch_size

    def _open_part(self, part: Part) -> ShardReader:
        return open_shard(self.url, self._entries[part.shard], self.storage_options)

    def iter_slot(self, worker: int) -> Iterator[dict]:
        """The endless stream of logical worker ``worker`` of this rank: plan → read → decode → tensors."""
        slot = self.rank * self.num_workers + worker
        return compose(
            plan_visits(self.slot_parts(worker), self.seed, slot, skip=self.samples_to_skip(worker)),
            read_parts(open_part=self._open_part, window=self.window, seed=self.seed, crop=self.crop),
        )

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


# --------------------------------------------------------------------------- validation set
def load_val_pairs(url: str, shards: list[dict] | None, n: int, crop: int | None,
                   storage_options: dict | None = None) -> list[dict]:
    """The first ``n`` held-out pairs (LR view 0, centre crop): a fixed validation set.

    An entry's ``first`` (a held-out tail of a shard, see :func:`hold_out_samples`) skips the
    samples before it; they are read and hashed, never decoded.
    """
    if shards is None:
        shards = load_manifest(url, storage_options)["shards"]
    out: list[dict] = []
    for entry in shards:
        with open_shard(url, entry, storage_options) as reader:
            for pair in compose(reader, drop(int(entry.get("first", 0))), decode(), to_validation_pairs(crop)):
                out.append(pair)
                if len(out) >= n:
                    return out
    return out


def batch_val(pairs: list[dict], batch_size: int) -> Iterator[dict]:
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        yield {"hr": torch.stack([c["hr"] for c in chunk]), "lr_up": torch.stack([c["lr_up"] for c in chunk]),
               "key": [c["key"] for c in chunk]}
