"""Training data: pairforge shards to every rank and loader worker, through the public
:class:`~pairforge.pipeline.pair_dataset.PairDataset` (one data path for pairforge's trainer and
anyone else's loop).

What the trainer adds to it:

* **which samples train and which validate** — :func:`split_train_val`: the last
  ``data.val_shards`` shards validate, or, in a dataset with too few shards, the last samples of
  its last shard (:func:`hold_out_samples`); training entries then end before them;
* **an endless stream** — ``PairDataset(endless=True)`` chains epoch after epoch in every worker,
  so no rank can run out of data and hang in a collective: every rank takes exactly
  ``steps × grad_accum`` batches, each from one worker in round-robin order;
* **the data position** — the number of batches a rank has consumed (``step × grad_accum``),
  which is all a resume needs (``PairDataset`` turns it into each worker's skip);
* **the generator's input** — :func:`generator_pair`: LR↑ by the one bicubic rule
  (:func:`pairforge.training.model.pixels.bicubic_input`), as inference makes it;
* **a fixed validation set** — :func:`load_val_pairs`: the first held-out pairs, view 0, centre crop.

The order of an epoch is a pure function of (seed, epoch) and the training shards; which part of
it a rank reads depends on ranks × workers, so resume with the same ranks × workers to continue
the exact same sample order (see the ``PairDataset`` module docstring for every rule).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from pairforge.pipeline.pair_dataset import PairDataset, aligned_crop, compose, decode_strict, drop
from pairforge.pipeline.shards import ShardReader, dataset_shard, load_manifest
from pairforge.training.model import pixels


# --------------------------------------------------------------------------- train / validation split
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



# --------------------------------------------------------------------------- the training stream
def generator_pair(item: dict) -> dict:
    """A ``PairDataset`` item (one LR view) → ``{'hr', 'lr_up', 'key'}``: LR↑ is the generator's
    input, computed exactly as inference computes it."""
    return {"hr": item["hr"], "lr_up": pixels.bicubic_input(item["lr"], size=item["hr"].shape[-2:]),
            "key": item["key"]}


def train_dataset(url: str, shards: list[dict], rank: int, world: int, batch_size: int, num_workers: int,
                  seed: int, crop: int | None, shuffle_window: int, start_batches: int = 0,
                  storage_options: dict | None = None) -> PairDataset:
    """The endless per-rank stream of training pairs, positioned after ``start_batches`` batches."""
    ds = PairDataset(url, shards=shards, seed=seed, rank=rank, world_size=world, crop=crop,
                     shuffle_window=shuffle_window, endless=True, transform=generator_pair,
                     storage_options=storage_options)
    ds.set_layout(batch_size, num_workers, batches=start_batches)
    return ds


def _worker_init(_):
    torch.set_num_threads(1)


def make_train_loader(url: str, shards: list[dict], rank: int, world: int, batch_size: int,
                      num_workers: int, seed: int, crop: int | None, shuffle_window: int,
                      start_batches: int = 0, prefetch_factor: int = 2,
                      storage_options: dict | None = None) -> DataLoader:
    ds = train_dataset(url, shards, rank, world, batch_size, num_workers, seed, crop, shuffle_window,
                       start_batches, storage_options)
    kw = {}
    if num_workers > 0:
        # s3fs is not fork-safe once the parent has used it: start workers with forkserver
        ctx = "forkserver" if str(url).startswith(("s3://", "s3a://")) else None
        kw = dict(prefetch_factor=prefetch_factor, worker_init_fn=_worker_init,
                  multiprocessing_context=ctx, persistent_workers=False)
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, drop_last=True, **kw)


# --------------------------------------------------------------------------- validation set
def to_validation_pairs(samples: Iterator[dict], crop: int | None) -> Iterator[dict]:
    """A stage: LR view 0 and the centre crop, LR↑ as the generator takes it — the same pairs at
    every validation."""
    for sample in samples:
        hr, (lr,) = aligned_crop(sample["hr"], sample["lr"][:1], crop, None)
        yield generator_pair({"hr": pixels.to_float(hr), "lr": pixels.to_float(lr), "key": sample["key"]})


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
        with ShardReader(dataset_shard(url, entry), storage_options) as reader:
            for pair in compose(reader, drop(int(entry.get("first", 0))), decode_strict,
                                lambda s: to_validation_pairs(s, crop)):
                out.append(pair)
                if len(out) >= n:
                    return out
    return out


def batch_val(pairs: list[dict], batch_size: int) -> Iterator[dict]:
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        yield {"hr": torch.stack([c["hr"] for c in chunk]), "lr_up": torch.stack([c["lr_up"] for c in chunk]),
               "key": [c["key"] for c in chunk]}
