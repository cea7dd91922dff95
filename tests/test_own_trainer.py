"""The README's "Train your own model on pairforge shards" script, run as written under
``torchrun --nproc-per-node 2`` on CPU (gloo), killed (``kill -9``) mid-epoch and run again,
checked from what each rank saw: the resume continues exactly where the checkpoint was taken
(killed run + resumed run = the uninterrupted order, batch by batch), equal counts per rank,
every key once per epoch apart from the stated remainder, a new order in epoch 2.

What each rank saw is recorded by ``tests/pairtrace/sitecustomize.py`` (on PYTHONPATH of the
ranks only): it wraps ``PairLoader.__iter__`` and appends one JSON line per batch the loop
received — the real loader still does all the work — and holds rank 0 at batch 3 of epoch 0
until the test has sent SIGKILL to torchrun and every process under it.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from proctools import descendants, kill_all

from pairforge.pipeline.pair_dataset import epoch_plan

ROOT = Path(__file__).resolve().parents[1]
TRACE = Path(__file__).resolve().parent / "pairtrace"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def readme_script() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# file: train_on_pairs.py\n.*?)```", text, re.S)
    assert block, "the README has no train_on_pairs.py block"
    return block.group(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """6 photos × 3 patches of 64 px, 2 views, shards of 4 photos: 18 samples in shards of 12 and 6."""
    from pairforge.pipeline import SynthConfig, synth

    cfg = SynthConfig.from_dict({"dataset": {"seed": 2, "views": 2, "images_per_shard": 4,
                                             "patch": {"size": 64, "per_image": 3}},
                                 "run": {"executor": "inline", "progress": False, "device": "cpu"}})
    res = synth("bundled", str(tmp_path_factory.mktemp("pairs")), cfg)
    assert res.ok
    return res.url


def _torchrun(cwd: Path, dataset: str, kill_at: int | None = None) -> subprocess.Popen:
    launch = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch}
    env.update(PYTHONPATH=str(TRACE), PAIRTRACE_DIR=str(cwd), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if kill_at is not None:
        env["PAIRTRACE_KILL_AT"] = str(kill_at)
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # torchrun's default port may be taken by a parallel test
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.Popen([str(torchrun), "--nproc-per-node", "2", "--master-port", str(port),
                             "train_on_pairs.py", dataset], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _seen(cwd: Path, rank: int) -> list[dict]:
    path = cwd / f"seen-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _by_position(records: list[dict]) -> dict[tuple[int, int], list[str]]:
    return {(r["epoch"], r["batch"]): r["keys"] for r in records}


def _reference(dataset: str, rank: int) -> dict[tuple[int, int], list[str]]:
    """What rank ``rank`` of 2 must see, batch by batch, over the script's 2 epochs (its settings,
    read in this process: the order is a pure function of seed, epoch and layout)."""
    from pairforge.pipeline import PairDataset

    ds = PairDataset(dataset, seed=0, crop=32, rank=rank, world_size=2)
    loader = ds.loader(batch_size=2, num_workers=2)
    out = {}
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i, batch in enumerate(loader):
            out[(epoch, i)] = list(batch["key"])
    return out


def test_the_readme_script_under_torchrun_killed_and_resumed(dataset, tmp_path):
    (tmp_path / "train_on_pairs.py").write_text(readme_script())
    # kill -9 of torchrun and everything under it while epoch 0 runs, then the same command again
    run = _torchrun(tmp_path, dataset, kill_at=3)  # rank 0 waits for its kill at batch 3
    deadline = time.monotonic() + 240
    while not (tmp_path / "kill-me").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "kill-me").exists(), run.communicate()[0][-3000:]
    kill_all({run.pid, *descendants(run.pid)})  # kill -9: torchrun, both ranks, their loader workers
    run.communicate(timeout=60)
    first = [_seen(tmp_path, r) for r in (0, 1)]
    assert first[0] and (tmp_path / "ckpt.pt").exists(), "killed before the first checkpoint"
    run = _torchrun(tmp_path, dataset)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out[-3000:]
    assert "rank 0: epoch 1 done" in out and "rank 1: epoch 1 done" in out, out[-2000:]

    stitched = []
    for r in (0, 1):
        resumed = _seen(tmp_path, r)[len(first[r]):]
        start = (resumed[0]["epoch"], resumed[0]["batch"])
        assert start == (0, 3), start  # mid-epoch, where rank 0's last checkpoint was taken
        # before the checkpoint what the killed run saw, from it on what the resumed run saw:
        # together exactly an uninterrupted run's batches
        seen = {**{p: k for p, k in _by_position(first[r]).items() if p < start}, **_by_position(resumed)}
        assert seen == _reference(dataset, r)
        stitched.append(seen)

    total = 18
    plan = epoch_plan(total, 2 * 2, "repeat")  # 2 ranks × 2 loader workers
    orders = []
    for epoch in (0, 1):
        per_rank = [[k for (e, _), keys in sorted(stitched[r].items()) if e == epoch for k in keys] for r in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == plan.per_rank(2)  # equal counts: DDP never hangs
        counts = Counter(per_rank[0] + per_rank[1])
        assert len(counts) == total  # every key in the epoch …
        assert sum(counts.values()) - total == plan.repeated  # … the stated remainder twice, no more
        orders.append(per_rank[0] + per_rank[1])
    assert orders[0] != orders[1]  # a new order in the second epoch
