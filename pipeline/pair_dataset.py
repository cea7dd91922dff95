"""``PairDataset``: a pairforge dataset in any PyTorch training loop, split over ranks and loader
workers with equal counts, a new order per epoch and exact mid-epoch resume.

A plain ``webdataset`` pipeline leaves three things to its user that DDP training gets wrong:
which rank reads which shards, what happens when the shards do not split evenly (a rank that
runs out first waits forever in the next all-reduce), and where to continue after a restart.
This object answers all three from the dataset's manifest, which records every shard's sample
count before a byte is read::

    ds = PairDataset("s3://bucket/pairs/ds-…", seed=0, crop=256)   # RANK/WORLD_SIZE from torchrun
    loader = ds.loader(batch_size=8, num_workers=4)                 # a DataLoader that counts batches
    for epoch in range(ds.epoch, epochs):
        ds.set_epoch(epoch)                  # keeps a position restored by load_state_dict
        for batch in loader:                 # batch["hr"], batch["lr"]: float (B, 3, H, W) in [0, 1]
            ...
            save({"data": ds.state_dict(), …})

**The epoch order** is a pure function of ``(seed, epoch)`` and the shard list, the same for any
number of ranks and workers: the shards in an order drawn from ``SampleRng(seed, "epoch{e}")``
(stream ``shard_order``), and inside each shard its samples in windows of ``shuffle_window``,
each window permuted (stream ``<shard>/window<j>``). That gives the epoch's sequence of N samples.

**The split.** The ``world_size × num_workers`` loader workers of all ranks are S *slots*; slot
``rank × num_workers + worker`` takes q consecutive positions of the epoch sequence, so every rank
sees exactly ``num_workers × q`` samples per epoch and no rank waits on another:

* ``remainder="repeat"`` (the default, like ``DistributedSampler``): q = ⌈N / S⌉; positions past
  the end wrap to the start, so the first ``S·q − N`` samples of the epoch order are seen twice;
* ``remainder="drop"``: q = ⌊N / S⌋; the last ``N − S·q`` samples of the epoch order wait for a
  later epoch (a different few each epoch, since the order changes).

:meth:`PairDataset.epoch_plan` states the counts. A slot opens only the shards its positions fall
in; a shard at the edge of two slots is read by both (each skips what is not its own).

**Integrity.** Every shard a slot opens is checked like every pairforge read: its size against the
manifest before the first byte, its sha256 over all its bytes when the tar ends (the rest of a
shard after a slot's last sample is still read for that), and a damaged shard raises
:class:`~pairforge.pipeline.shards.ShardIntegrityError` naming it. Nothing is unpickled.

**Per sample.** One LR view drawn per epoch from ``(seed, key, epoch)`` (``views="one"``) or all of
them (``views="all"``: ``lr`` is a list); an optional aligned random crop drawn from the same
stream (``crop`` in HR pixels, a multiple of the scale); tensors (3, H, W) float32 in [0, 1]
(``output="tensor"``) or the stored HWC uint8 arrays (``output="uint8"``); ``key`` always, the
parameter record as a JSON string when ``params=True`` (a string collates; a nested dict whose
fields differ per sample does not).

**Resume.** :meth:`PairDataset.state_dict` is ``(epoch, batches this rank has taken)`` plus the
layout they count in (ranks, workers, batch size, seed, shards). Loader worker w produced batches
w, w+W, …, so after n batches it has handed out ``len(range(w, n, W)) × B`` samples (at most q);
a resumed worker skips exactly those (read and hashed, never decoded). A resumed DataLoader starts
its round-robin at worker 0, so physical worker i plays worker ``(i + n) mod W``. Resume with the
same ranks × workers × batch size; :meth:`load_state_dict` refuses another layout naming the field.
:meth:`PairDataset.loader` is what counts the batches; with a DataLoader of your own the epochs
split and order the same, but the dataset cannot know how far a loop got.

``endless=True`` (pairforge's trainer) chains epoch after epoch in every worker, so a stream never
ends; a batch may then span two epochs.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pairforge.degradations.rng import SampleRng
from pairforge.errors import UsageError

from .decode import to_float
from .shards import ShardReader, dataset_shard, decode_sample, load_manifest, pick_shards
from .storage import redact

REMAINDERS = ("repeat", "drop")
VIEWS = ("one", "all")
OUTPUTS = ("tensor", "uint8")


class DataStateMismatch(UsageError, ValueError):
    """A saved data position counts in another layout (ranks, workers, batch size, seed, shards)."""


# --------------------------------------------------------------------------- composing stages
def compose(source: Iterable[Any], *stages: Callable[[Iterator[Any]], Iterator[Any]]) -> Iterator[Any]:
    """``compose(src, f, g)`` is ``g(f(iter(src)))``: each item flows through the stages in order."""
    items = iter(source)
    for apply in stages:
        items = apply(items)
    return items


def drop(n: int) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """A stage: all but the first ``n`` items; those are still pulled (a shard's bytes are still hashed)."""
    return lambda items: itertools.islice(items, n, None)


def decode_strict(raws: Iterator[dict]) -> Iterator[dict]:
    """A stage: raw tar samples → ``{key, hr, lr: [...], params}``; anything but pairforge's own
    member types is refused (nothing is unpickled)."""
    for raw in raws:
        yield decode_sample(raw, strict=True)


def aligned_crop(hr: np.ndarray, lrs: Sequence[np.ndarray], crop: int | None,
                 rng: np.random.Generator | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The same ``crop`` × ``crop`` HR window and its LR windows (crop / scale) from every view:
    at a position drawn from ``rng``, or the centre when ``rng`` is None. No crop when ``crop`` is
    None or the patch is not larger."""
    if crop is None or (hr.shape[0] <= crop and hr.shape[1] <= crop):
        return hr, list(lrs)
    scale = hr.shape[0] // lrs[0].shape[0]
    if crop % scale:
        raise UsageError(f"crop={crop} is not a multiple of the dataset's scale {scale}")
    lc, (h, w) = crop // scale, lrs[0].shape[:2]
    if rng is None:
        y0, x0 = (h - lc) // 2, (w - lc) // 2
    else:
        y0, x0 = int(rng.integers(0, h - lc + 1)), int(rng.integers(0, w - lc + 1))
    return (hr[y0 * scale:(y0 + lc) * scale, x0 * scale:(x0 + lc) * scale],
            [lr[y0:y0 + lc, x0:x0 + lc] for lr in lrs])


# --------------------------------------------------------------------------- the epoch's plan
@dataclass(frozen=True)
class Segment:
    """Positions ``start … start + count − 1`` of an epoch's sequence: samples ``first …`` of one shard."""
    entry: dict   # the shard's manifest entry
    start: int    # its first position in the epoch sequence
    first: int    # index of its first sample in the shard (a held-out tail starts later)
    count: int


@dataclass(frozen=True)
class EpochPlan:
    """How one epoch splits: ``slots`` = ranks × workers, each taking ``per_slot`` positions."""
    samples: int
    slots: int
    per_slot: int
    remainder: str

    @property
    def repeated(self) -> int:
        """Samples seen twice this epoch (``remainder="repeat"``)."""
        return max(0, self.slots * self.per_slot - self.samples)

    @property
    def dropped(self) -> int:
        """Samples left for a later epoch (``remainder="drop"``)."""
        return max(0, self.samples - self.slots * self.per_slot)

    def per_rank(self, num_workers: int) -> int:
        return self.per_slot * max(1, num_workers)


def epoch_plan(samples: int, slots: int, remainder: str) -> EpochPlan:
    if samples < 1:
        raise UsageError("the dataset has no samples to read")
    per_slot = math.ceil(samples / slots) if remainder == "repeat" else samples // slots
    if per_slot == 0:
        raise UsageError(f"the dataset has {samples} samples, fewer than ranks × loader workers = {slots}, "
                         "and remainder='drop' would give every rank nothing; use fewer ranks/workers "
                         "or remainder='repeat'")
    return EpochPlan(samples, slots, per_slot, remainder)


def epoch_segments(entries: Sequence[dict], seed: int, epoch: int) -> list[Segment]:
    """The shards in epoch ``epoch``'s order, each with where its samples sit in the sequence."""
    order = SampleRng(seed, f"epoch{epoch}").numpy("shard_order").permutation(len(entries))
    out, start = [], 0
    for i in order:
        entry = entries[int(i)]
        count = int(entry["count"])
        out.append(Segment(entry, start, int(entry.get("first", 0)), count))
        start += count
    return out


def window_order(seed: int, epoch: int, shard: str, window: int, size: int) -> np.ndarray:
    """The permutation of window ``window`` (``size`` samples) of ``shard`` in epoch ``epoch``."""
    return SampleRng(seed, f"epoch{epoch}").numpy(f"{shard}/window{window}").permutation(size)


def slot_ranges(plan: EpochPlan, slot: int, skip: int) -> list[tuple[int, int]]:
    """The positions slot ``slot`` reads, after its first ``skip``: one range, or two when it wraps."""
    lo, hi = slot * plan.per_slot + skip, (slot + 1) * plan.per_slot
    if lo >= hi:
        return []
    n = plan.samples
    if hi <= n:
        return [(lo, hi)]
    # remainder="repeat": wrap around to the start of the epoch order (more than once if N < S)
    out = []
    while lo < hi:
        a = lo % n
        b = min(n, a + (hi - lo))
        out.append((a, b))
        lo += b - a
    return out


# --------------------------------------------------------------------------- the dataset
class PairDataset(IterableDataset):
    """pairforge pairs for any PyTorch loop (see the module docstring for every rule)."""

    def __init__(self, url: str, *, shards: Sequence[int | str | dict] | None = None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, views: str = "one",
                 crop: int | None = None, output: str = "tensor", params: bool = False,
                 remainder: str = "repeat", shuffle_window: int = 64, endless: bool = False,
                 transform: Callable[[dict], Any] | None = None, storage_options: dict | None = None):
        super().__init__()
        _check_choice("views", views, VIEWS)
        _check_choice("output", output, OUTPUTS)
        _check_choice("remainder", remainder, REMAINDERS)
        if shuffle_window < 1:
            raise UsageError(f"shuffle_window must be ≥ 1, not {shuffle_window}")
        if crop is not None and crop < 1:
            raise UsageError(f"crop must be ≥ 1 or None, not {crop}")
        self.url, self.storage_options = str(url), storage_options
        self.entries = _select_entries(self.url, shards, storage_options)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.seed, self.views, self.crop, self.output = int(seed), views, crop, output
        self.params, self.remainder, self.shuffle_window = params, remainder, shuffle_window
        self.endless, self.transform = endless, transform
        self.samples = sum(int(e["count"]) for e in self.entries)
        epoch_plan(self.samples, self.world_size, remainder)  # refuse an impossible split now, not in a worker
        self.epoch, self.batches = 0, 0
        self.batch_size: int | None = None
        self.num_workers: int | None = None
        self._epoch_done = False

    # ------------------------------------------------------------------ epochs and position
    def epoch_plan(self, num_workers: int | None = None) -> EpochPlan:
        """This epoch's split for ``num_workers`` loader workers per rank (the loader's, by default)."""
        workers = max(1, num_workers if num_workers is not None else (self.num_workers or 0))
        return epoch_plan(self.samples, self.world_size * workers, self.remainder)

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next: its own order. Calling it for the epoch a restored state is in
        keeps that position (so a resumed loop can call it as usual)."""
        if epoch != self.epoch or self._epoch_done:
            self.epoch, self.batches, self._epoch_done = int(epoch), 0, False

    def state_dict(self) -> dict:
        """Where this rank is: the epoch and the batches it has taken in it, with their layout."""
        return {"epoch": self.epoch, "batches": self.batches, "epoch_done": self._epoch_done,
                "world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "seed": self.seed, "remainder": self.remainder, "shards": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; refuses a state of another layout."""
        for field in ("world_size", "num_workers", "batch_size", "seed", "remainder"):
            if state.get(field) != getattr(self, field):
                raise DataStateMismatch(f"the saved data position has {field}={state.get(field)!r}, "
                                        f"this dataset {field}={getattr(self, field)!r}; resume with the same "
                                        "ranks, loader workers, batch size, seed and remainder")
        if state.get("shards") != self.fingerprint():
            raise DataStateMismatch("the saved data position is for other shards than this dataset's")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        self._epoch_done = bool(state.get("epoch_done", False))

    def fingerprint(self) -> str:
        """What the shard list is (names, counts, sha256): a position only means something for it."""
        text = json.dumps([[e["name"], int(e["count"]), int(e.get("first", 0)), e.get("sha256")]
                           for e in self.entries])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def set_layout(self, batch_size: int, num_workers: int, batches: int | None = None) -> None:
        """The loader's batch size and worker count (and, to start mid-epoch, how many batches of
        this epoch were taken), for a DataLoader built around this dataset by hand rather than by
        :meth:`loader` — the trainer does, to pick its own worker start method."""
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        if batches is not None:
            self.batches = int(batches)

    def loader(self, batch_size: int, num_workers: int = 0, **loader_kw: Any) -> PairLoader:
        """A DataLoader over this dataset that counts the batches it hands out (for :meth:`state_dict`)."""
        return PairLoader(self, batch_size, num_workers, **loader_kw)

    # ------------------------------------------------------------------ one worker's stream
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        if self.num_workers is not None and max(1, self.num_workers) != workers:
            raise RuntimeError(f"PairDataset was set up for {self.num_workers} loader workers, "
                               f"the DataLoader runs {workers}")
        start = self.batches
        if start and not self.batch_size:
            raise RuntimeError("a resumed PairDataset needs its batch size: read it through ds.loader()")
        worker = (physical + start) % workers  # the DataLoader restarts its round-robin at worker 0
        skip = len(range(worker, start, workers)) * (self.batch_size or 0)
        return self.iter_slot(self.rank * workers + worker, workers, skip)

    def iter_slot(self, slot: int, workers: int, skip: int = 0) -> Iterator[Any]:
        """The samples of slot ``slot`` (of ranks × ``workers``) from epoch ``self.epoch`` on,
        after its first ``skip``: one epoch, or every later one too when ``endless``."""
        plan = epoch_plan(self.samples, self.world_size * workers, self.remainder)
        epoch, skip = self.epoch, skip
        if self.endless:
            epoch, skip = epoch + skip // plan.per_slot, skip % plan.per_slot
        while True:
            segments = epoch_segments(self.entries, self.seed, epoch)
            for lo, hi in slot_ranges(plan, slot, skip):
                for seg in segments:
                    if seg.start < hi and lo < seg.start + seg.count:
                        yield from self._read_segment(seg, epoch, lo, hi)
            if not self.endless:
                return
            epoch, skip = epoch + 1, 0

    def _read_segment(self, seg: Segment, epoch: int, lo: int, hi: int) -> Iterator[Any]:
        """The samples of one shard at positions [lo, hi) of epoch ``epoch``, read and decoded
        inside the shard's reader (a sample that fails to decode is blamed on a damaged shard)."""
        name, size = seg.entry["name"], self.shuffle_window
        with ShardReader(dataset_shard(self.url, seg.entry), self.storage_options) as reader:
            raws = iter(reader)
            kept = itertools.islice(raws, seg.first, seg.first + seg.count)
            for w in itertools.count():
                window = list(itertools.islice(kept, size))
                if not window:
                    break
                base = seg.start + w * size
                if base + len(window) <= lo or base >= hi:
                    continue  # read (and hashed), never decoded
                for j, i in enumerate(window_order(self.seed, epoch, name, w, len(window))):
                    if lo <= base + j < hi:
                        yield self._item(decode_sample(window[i], strict=True), epoch)
            for _ in raws:  # the rest of the shard: read, so that its sha256 is checked
                pass

    def _item(self, sample: dict, epoch: int) -> Any:
        rng = SampleRng(self.seed, sample["key"]).numpy(f"view_crop_epoch{epoch}")
        lrs = sample["lr"]
        item: dict[str, Any] = {"key": sample["key"]}
        if self.views == "one":
            item["view"] = int(rng.integers(0, len(lrs)))
            lrs = [lrs[item["view"]]]
        hr, lrs = aligned_crop(sample["hr"], lrs, self.crop, rng)
        if self.output == "tensor":
            hr, lrs = to_float(hr), [to_float(lr) for lr in lrs]
        item["hr"] = hr
        item["lr"] = lrs[0] if self.views == "one" else lrs
        if self.params:
            item["params"] = json.dumps(sample["params"], sort_keys=True)
        return self.transform(item) if self.transform is not None else item


class PairLoader:
    """A ``DataLoader`` over a :class:`PairDataset` that counts the batches it hands out, so the
    dataset's :meth:`~PairDataset.state_dict` knows where this rank is. Iterating it after an epoch
    ended, without ``set_epoch``, reads the next epoch (never a replay of the same order)."""

    def __init__(self, dataset: PairDataset, batch_size: int, num_workers: int = 0, **loader_kw: Any):
        if loader_kw.get("persistent_workers"):
            raise UsageError("persistent_workers would keep the workers' first epoch: PairLoader starts them "
                             "per epoch")
        dataset.set_layout(batch_size, num_workers)
        self.dataset = dataset
        self.drop_last = bool(loader_kw.get("drop_last", False))
        self._loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **loader_kw)

    def __len__(self) -> int:
        """Batches this rank takes per epoch (equal on every rank)."""
        ds = self.dataset
        if ds.endless:
            raise TypeError("an endless PairDataset has no length")
        per_slot = ds.epoch_plan().per_slot
        per_worker = per_slot // ds.batch_size if self.drop_last else math.ceil(per_slot / ds.batch_size)
        return per_worker * max(1, ds.num_workers or 0)

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset
        if ds._epoch_done:
            ds.set_epoch(ds.epoch + 1)
        for batch in self._loader:
            ds.batches += 1
            yield batch
        ds._epoch_done = not ds.endless


# --------------------------------------------------------------------------- arguments
def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torchrun's ``RANK``/``WORLD_SIZE``, else a single process."""
    r = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    w = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if w < 1 or not 0 <= r < w:
        raise UsageError(f"rank {r} is not one of world_size {w} ranks")
    return r, w


def _select_entries(url: str, shards: Sequence[int | str | dict] | None,
                    storage_options: dict | None) -> list[dict]:
    """Manifest entries of the chosen shards: all, picked by index or name, or given as entries
    (e.g. a split made from the manifest, with ``first``/``count`` for part of a shard)."""
    if shards is not None and all(isinstance(s, dict) for s in shards):
        entries = [dict(s) for s in shards]
    else:
        listed = load_manifest(url, storage_options)["shards"]
        entries = list(listed) if shards is None else pick_shards(listed, shards, lambda e: e["name"], url)
    entries = [e for e in entries if int(e["count"]) > 0]
    if not entries:
        raise UsageError(f"{redact(url)}: the chosen shards hold no samples")
    return entries
