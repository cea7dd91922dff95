"""PairDataset, the one data path of pairforge's trainer and of anyone's loop: real shards from
the pipeline's writer, uneven shards, several ranks and loader workers — equal per-rank counts,
every sample once per epoch (apart from the stated remainder), a new order per epoch, exact
mid-epoch resume, and the trainer's endless stream built on the same object."""
from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch

from pairforge.errors import UsageError
from pairforge.pipeline.pair_dataset import (
    DataStateMismatch,
    PairDataset,
    epoch_plan,
    epoch_segments,
    slot_ranges,
)
from pairforge.training.loop.data import make_train_loader

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory):
    from pairforge.pipeline import SynthConfig, synth

    out = tmp_path_factory.mktemp("ds")
    # 6 bundled photos × 3 patches, 4 photos per shard → shards of 12 and 6 samples, 2 LR views
    cfg = SynthConfig.from_dict({"dataset": {"degradation": "realesrgan-x4plus", "seed": 3, "views": 2,
                                             "images_per_shard": 4, "patch": {"size": 64, "per_image": 3}},
                                 "run": {"executor": "inline", "progress": False, "device": "cpu"}})
    res = synth("bundled", str(out), cfg)
    assert res.ok
    counts = [s["count"] for s in res.manifest["shards"]]
    assert len(set(counts)) > 1, counts  # really uneven
    return res.url, res.manifest


def _epoch(url: str, world: int, workers: int, batch: int, epoch: int = 0, **kw) -> list[list[str]]:
    """Every rank's keys of one epoch, read as each rank's loop reads them."""
    per_rank = []
    for rank in range(world):
        ds = PairDataset(url, rank=rank, world_size=world, shuffle_window=4, **kw)
        ds.set_epoch(epoch)
        loader = ds.loader(batch_size=batch, num_workers=workers)
        batches = [list(b["key"]) for b in loader]
        assert len(batches) == len(loader)  # the length it states is what it gives
        keys = list(itertools.chain(*batches))
        per_rank.append(keys)
    return per_rank


# ------------------------------------------------------------------ the plan, as arithmetic
def test_plan_states_the_remainder():
    repeat, drop = epoch_plan(18, 4, "repeat"), epoch_plan(18, 4, "drop")
    assert (repeat.per_slot, repeat.repeated, repeat.dropped) == (5, 2, 0)
    assert (drop.per_slot, drop.repeated, drop.dropped) == (4, 0, 2)
    # slots tile the epoch sequence; the last one wraps to the start in repeat mode
    assert [slot_ranges(repeat, s, 0) for s in range(4)] == [[(0, 5)], [(5, 10)], [(10, 15)], [(15, 18), (0, 2)]]
    assert slot_ranges(repeat, 3, 4) == [(1, 2)]  # resumed after 4 of its 5
    assert slot_ranges(epoch_plan(3, 4, "repeat"), 3, 0) == [(0, 1)]  # fewer samples than slots
    with pytest.raises(UsageError, match="fewer than ranks × loader workers"):
        epoch_plan(3, 4, "drop")


def test_epoch_order_depends_on_seed_and_epoch_only():
    shards = [{"name": f"s{i}", "count": c} for i, c in enumerate([5, 3, 7, 2])]
    seg = epoch_segments(shards, 1, 0)
    assert sorted(s.entry["name"] for s in seg) == ["s0", "s1", "s2", "s3"]
    assert [s.start for s in seg] == list(itertools.accumulate([0] + [s.count for s in seg][:-1]))
    assert epoch_segments(shards, 1, 0) == seg
    orders = {tuple(s.entry["name"] for s in epoch_segments(shards, seed, e)) for seed in (1, 2) for e in range(4)}
    assert len(orders) > 2


# ------------------------------------------------------------------ real shards
def test_ranks_see_equal_counts_and_every_sample_each_epoch(uneven_dataset):
    url, man = uneven_dataset
    total = sum(s["count"] for s in man["shards"])
    world, workers, bs = 2, 2, 2
    plan = epoch_plan(total, world * workers, "repeat")
    epoch0 = _epoch(url, world, workers, bs)
    assert len(epoch0[0]) == len(epoch0[1]) == plan.per_rank(workers)
    seen = Counter(epoch0[0] + epoch0[1])
    assert len(seen) == total  # every sample at least once …
    assert sum(seen.values()) - total == plan.repeated  # … and exactly the stated remainder twice
    # drop mode: each sample at most once, the stated number waits
    dropped = _epoch(url, world, workers, bs, remainder="drop")
    assert len(dropped[0]) == len(dropped[1])
    assert len(set(dropped[0] + dropped[1])) == len(dropped[0] + dropped[1]) == total - plan_drop(total, 4)
    # a different order next epoch, the same samples
    epoch1 = _epoch(url, world, workers, bs, epoch=1)
    assert epoch1 != epoch0 and set(epoch1[0] + epoch1[1]) == set(seen)


def plan_drop(total: int, slots: int) -> int:
    return epoch_plan(total, slots, "drop").dropped


def test_the_epoch_order_is_the_same_for_any_ranks_and_workers(uneven_dataset):
    url, man = uneven_dataset
    total = sum(s["count"] for s in man["shards"])
    one = _epoch(url, 1, 0, 1, remainder="drop")[0]
    assert len(one) == total
    # 3 ranks × 1 worker in drop mode: the ranks' keys, in rank order, are a prefix of that order
    three = _epoch(url, 3, 0, 1, remainder="drop")
    assert list(itertools.chain(*three)) == one[:3 * (total // 3)]


def test_views_crops_outputs_and_params(uneven_dataset):
    url, _ = uneven_dataset
    full = {s["key"]: s for s in PairDataset(url, views="all", output="uint8", params=True)}
    item = next(iter(full.values()))
    assert isinstance(item["lr"], list) and len(item["lr"]) == 2 and item["hr"].dtype == np.uint8
    assert json.loads(item["params"])  # the parameter record, as a string that collates
    cropped = list(PairDataset(url, crop=32, output="uint8"))
    views = Counter()
    for s in cropped:
        hr, lr = s["hr"], s["lr"]
        assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3)
        src = full[s["key"]]
        # the HR window and the LR window come from the same place of the same view
        ys, xs = np.where((src["lr"][s["view"]][:-7, :-7, 0] == lr[0, 0, 0]))
        assert any((src["lr"][s["view"]][y:y + 8, x:x + 8] == lr).all()
                   and (src["hr"][4 * y:4 * y + 32, 4 * x:4 * x + 32] == hr).all() for y, x in zip(ys, xs))
        views[s["view"]] += 1
    assert set(views) == {0, 1}  # one view drawn per sample
    tensors = next(iter(PairDataset(url, crop=32)))
    assert tensors["hr"].dtype == torch.float32 and tensors["hr"].shape == (3, 32, 32)
    assert 0 <= float(tensors["lr"].min()) and float(tensors["lr"].max()) <= 1
    with pytest.raises(UsageError, match="views must be one of"):
        PairDataset(url, views="some")
    with pytest.raises(UsageError, match="shard 'nope.tar' is not part of"):
        PairDataset(url, shards=["nope.tar"])
    # one picking rule for every reader: the dataset object and the shard resolver agree
    from pairforge.pipeline.shards import shard_sources

    names = [e["name"] for e in PairDataset(url, shards=[-1, 0]).entries]
    assert [s.name for s in shard_sources(url, [-1, 0])] == names
    with pytest.raises(UsageError, match="shard 'nope.tar' is not part of") as refused:
        shard_sources(url, ["nope.tar"])
    assert isinstance(refused.value, KeyError)  # what shard_urls callers caught before


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resumes_exactly_mid_epoch(uneven_dataset, workers):
    url, _ = uneven_dataset
    kw = dict(rank=1, world_size=2, seed=5, shuffle_window=4)
    ds = PairDataset(url, **kw)
    ds.set_epoch(3)
    loader = ds.loader(batch_size=2, num_workers=workers)
    whole = [list(b["key"]) for b in loader]
    ds.set_epoch(3)
    state = None
    for i, _ in enumerate(loader):
        if i == 2:
            state = ds.state_dict()
            break
    again = PairDataset(url, **kw)
    rest_loader = again.loader(batch_size=2, num_workers=workers)
    again.load_state_dict(state)
    again.set_epoch(3)  # a resumed loop calls it as usual: the position stays
    assert [list(b["key"]) for b in rest_loader] == whole[3:]
    # the next pass without set_epoch is the next epoch, not a replay
    assert [list(b["key"]) for b in rest_loader] != whole and again.epoch == 4
    other = PairDataset(url, **kw)
    other.loader(batch_size=4, num_workers=workers)
    with pytest.raises(DataStateMismatch, match="batch_size=2"):
        other.load_state_dict(state)


# ------------------------------------------------------------------ the trainer's endless stream
def _keys(loader, n_batches):
    keys = []
    for batch in itertools.islice(loader, n_batches):
        assert batch["hr"].shape == batch["lr_up"].shape
        keys += list(batch["key"])
    return keys


def test_trainer_stream_is_endless_and_equal(uneven_dataset):
    url, man = uneven_dataset
    total = sum(s["count"] for s in man["shards"])
    n_batches = 3 * total // (2 * 2)  # three epochs' worth per rank
    per_rank = [_keys(make_train_loader(url, man["shards"], r, 2, 2, 2, seed=0, crop=None, shuffle_window=4),
                      n_batches) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == n_batches * 2
    assert set(per_rank[0]) | set(per_rank[1]) == {k for ks in _epoch(url, 1, 0, 1) for k in ks}


@pytest.mark.parametrize("start", [1, 3, 7])
def test_trainer_resume_position_continues_the_stream(uneven_dataset, start):
    url, man = uneven_dataset
    kw = dict(seed=1, crop=None, shuffle_window=4)
    full = _keys(make_train_loader(url, man["shards"], 1, 2, 2, 2, **kw), start + 6)
    resumed = _keys(make_train_loader(url, man["shards"], 1, 2, 2, 2, start_batches=start, **kw), 6)
    assert resumed == full[start * 2:]


def test_trainer_items_are_the_generators_input(uneven_dataset):
    from pairforge.training.model import pixels

    url, man = uneven_dataset
    batch = next(iter(make_train_loader(url, man["shards"], 0, 1, 4, 0, seed=0, crop=32, shuffle_window=4)))
    assert batch["hr"].shape == batch["lr_up"].shape == (4, 3, 32, 32)
    same = PairDataset(url, shards=man["shards"], seed=0, crop=32, shuffle_window=4, endless=True)
    first = next(iter(same))
    assert first["key"] == batch["key"][0]
    assert torch.equal(batch["lr_up"][0], pixels.bicubic_input(first["lr"], 4))
