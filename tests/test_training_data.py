"""Shard streaming for training: real shards from the pipeline's writer, several ranks and
dataloader workers, uneven shards — equal per-rank sample counts, no hang, exact resume."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pairforge.training.data import ShardStream, make_train_loader, plan_parts

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory):
    from pairforge.pipeline import synth

    out = tmp_path_factory.mktemp("ds")
    # 6 bundled photos × 3 patches, 4 photos per shard → shards of 12 and 6 samples, 2 LR views
    res = synth("bundled", str(out), preset="realesrgan-x4plus", executor="inline", images_per_shard=4,
                patches_per_image=3, patch_size=64, views=2, progress=False, device="cpu", seed=3)
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
