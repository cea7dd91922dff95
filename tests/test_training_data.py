"""Shard streaming for training: real shards from the pipeline's writer, several ranks and
dataloader workers, uneven shards — equal per-rank sample counts, no hang, exact resume; the
stream's stages compose, and its order is a pure function of (seed, slot, pass)."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pairforge.degradations.rng import SampleRng
from pairforge.training.loop.data import (
    Part,
    ShardStream,
    compose,
    drop,
    keep_part,
    make_train_loader,
    part_order,
    plan_parts,
    shuffle_windows,
)

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


def test_plan_balances_and_covers():
    shards = [{"name": "a", "count": 11}, {"name": "b", "count": 5}, {"name": "c", "count": 8}]
    plan = plan_parts(shards, 4)  # fewer shards than slots → interleaved parts
    assert all(plan)
    seen = Counter()
    for slot in plan:
        for p in slot:
            for i in range(p.offset, {"a": 11, "b": 5, "c": 8}[p.shard], p.stride):
                seen[(p.shard, i)] += 1
    assert len(seen) == 24 and set(seen.values()) == {1}  # every sample in exactly one slot
    loads = [sum(p.count for p in s) for s in plan]
    assert max(loads) - min(loads) <= 6
    with pytest.raises(ValueError, match="fewer"):
        plan_parts([{"name": "a", "count": 2}], 4)


def _keys(loader, n_batches):
    keys = []
    for batch in itertools.islice(loader, n_batches):
        assert batch["hr"].shape == batch["lr_up"].shape
        keys += list(batch["key"])
    return keys


def test_two_ranks_two_workers_equal_counts(uneven_dataset):
    url, man = uneven_dataset
    total = sum(s["count"] for s in man["shards"])
    world, workers, bs = 2, 2, 2
    n_batches = total // (world * bs)  # one epoch's worth per rank
    per_rank = []
    for rank in range(world):
        loader = make_train_loader(url, man["shards"], rank, world, bs, workers, seed=0, crop=None,
                                   shuffle_window=4)
        per_rank.append(_keys(loader, n_batches))
    assert len(per_rank[0]) == len(per_rank[1]) == n_batches * bs
    # ranks read disjoint parts of the data; one epoch covers most of it (plan imbalance only)
    assert not set(per_rank[0]) & set(per_rank[1])
    covered = set(per_rank[0]) | set(per_rank[1])
    assert len(covered) >= 0.6 * total
    # the stream never ends: three more epochs keep coming on every rank
    for rank in range(world):
        loader = make_train_loader(url, man["shards"], rank, world, bs, workers, seed=0, crop=None,
                                   shuffle_window=4)
        assert len(_keys(loader, 3 * n_batches)) == 3 * n_batches * bs


def test_random_view_and_upsampling(uneven_dataset):
    url, man = uneven_dataset
    ds = ShardStream(url, man["shards"], 0, 1, 1, 1, seed=0, crop=32, shuffle_window=4)
    it = ds.iter_slot(0)
    samples = [next(it) for _ in range(8)]
    for s in samples:
        assert s["hr"].shape == (3, 32, 32) and s["lr_up"].shape == (3, 32, 32)
        assert 0 <= float(s["lr_up"].min()) and float(s["lr_up"].max()) <= 1
    # seeded: the same stream twice
    again = ShardStream(url, man["shards"], 0, 1, 1, 1, seed=0, crop=32, shuffle_window=4).iter_slot(0)
    for s in samples:
        t = next(again)
        assert t["key"] == s["key"] and bool((t["lr_up"] == s["lr_up"]).all())


@pytest.mark.parametrize("start", [1, 3, 7])
def test_resume_position_continues_the_stream(uneven_dataset, start):
    url, man = uneven_dataset
    kw = dict(seed=1, crop=None, shuffle_window=4)
    full = _keys(make_train_loader(url, man["shards"], 1, 2, 2, 2, **kw), start + 6)
    resumed = _keys(make_train_loader(url, man["shards"], 1, 2, 2, 2, start_batches=start, **kw), 6)
    assert resumed == full[start * 2:]


def test_stages_compose_in_order():
    part = Part("s", stride=3, offset=1, count=10)  # indices 1, 4, …, 28 of a 30-sample shard
    assert list(compose(range(30), keep_part(part))) == list(range(1, 30, 3))
    assert list(compose(range(30), keep_part(part), drop(8))) == [25, 28]
    rng = SampleRng(0, "slot0_pass0")
    shuffled = list(compose(range(30), keep_part(part), shuffle_windows(4, rng, position=0)))
    assert [sorted(shuffled[i:i + 4]) for i in (0, 4, 8)] == [[1, 4, 7, 10], [13, 16, 19, 22], [25, 28]]
    assert shuffled != list(range(1, 30, 3))
    assert shuffled == list(compose(range(30), keep_part(part), shuffle_windows(4, rng, position=0)))
    assert shuffled != list(compose(range(30), keep_part(part), shuffle_windows(4, rng, position=1)))
    # the window index names its stream: a chain resumed at window 1 shuffles the rest alike
    tail = list(compose(range(30), keep_part(part), drop(4), shuffle_windows(4, rng, 0, first_window=1)))
    assert tail == shuffled[4:]


def _slot_keys(stream: ShardStream, worker: int, n: int) -> list[str]:
    return [s["key"] for s in itertools.islice(stream.iter_slot(worker), n)]


def test_order_is_a_function_of_seed_slot_and_pass(uneven_dataset):
    url, man = uneven_dataset
    total = sum(s["count"] for s in man["shards"])
    kw = dict(crop=None, shuffle_window=4)
    # slot 1 of a 2-slot plan is rank 1's only worker or rank 0's second worker: the same stream
    as_rank = _slot_keys(ShardStream(url, man["shards"], 1, 2, 1, 1, seed=4, **kw), 0, 2 * total)
    as_worker = _slot_keys(ShardStream(url, man["shards"], 0, 1, 2, 1, seed=4, **kw), 1, 2 * total)
    assert as_rank == as_worker

    one = ShardStream(url, man["shards"], 0, 1, 1, 1, seed=4, **kw)
    stream = _slot_keys(one, 0, 2 * total)
    pass0, pass1 = stream[:total], stream[total:]
    assert sorted(pass0) == sorted(pass1) and len(set(pass0)) == total  # each pass: every sample once
    assert pass0 != pass1  # a new part order and new window shuffles per pass
    # a stream started at pass 1 (a resume at a pass boundary) is exactly pass 1
    assert _slot_keys(ShardStream(url, man["shards"], 0, 1, 1, 1, seed=4, start_batches=total, **kw), 0,
                      total) == pass1
    assert _slot_keys(ShardStream(url, man["shards"], 0, 1, 1, 1, seed=5, **kw), 0, total) != pass0
    # the part order comes from the project's one seed derivation
    parts = one.slot_parts(0)
    expected = SampleRng(4, "slot0_pass1").numpy("part_order").permutation(len(parts))
    assert part_order(4, 0, parts, 1) == [parts[i] for i in expected]
