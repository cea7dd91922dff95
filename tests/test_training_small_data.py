"""A small dataset trains with default flags: too few shards to hold one out → samples are held out.

A first try on a handful of photos makes a one-shard dataset; refusing it for its size would
send a new user away before they saw anything train.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pairforge.pipeline.pair_dataset import PairDataset, epoch_segments
from pairforge.training.loop.data import split_train_val

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]


def _manifest(*counts: int) -> dict:
    return {"shards": [{"name": f"shard-{i:06d}.tar", "count": c, "bytes": 1, "sha256": "x"}
                       for i, c in enumerate(counts)]}


def test_enough_shards_hold_out_whole_shards():
    train, val = split_train_val(_manifest(4, 4, 4), val_shards=1, has_val_data=False, val_samples=16)
    assert [s["name"] for s in train] == ["shard-000000.tar", "shard-000001.tar"]
    assert val == [_manifest(4, 4, 4)["shards"][2]]


def test_one_shard_holds_out_its_last_samples_and_never_trains_on_them():
    train, val = split_train_val(_manifest(8), val_shards=1, has_val_data=False, val_samples=16)
    assert train[0]["count"] == 6 and train[0]["end"] == 6      # at most a quarter held out
    assert val[0]["count"] == 2 and val[0]["first"] == 6
    assert train[0]["sha256"] == val[0]["sha256"] == "x"       # still verified when read
    assert PairDataset("unused", shards=train, rank=0, world_size=1).samples == 6
    assert [(s.first, s.count) for s in epoch_segments(train, 0, 0)] == [(0, 6)]  # samples 0…5 only
    assert [(s.first, s.count) for s in epoch_segments(val, 0, 0)] == [(6, 2)]
    # a single-sample shard cannot be split: everything trains, validation has nothing
    assert split_train_val(_manifest(1), 1, False, 16) == (_manifest(1)["shards"], [])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_tiny_trains_on_a_one_shard_dataset_with_default_flags(photo_dir, tmp_path):
    # a user's shell, not this test process: a session fixture may have set RANK/WORLD_SIZE/MASTER_*
    # here, and `pairforge train` would then take itself for a rank of that (already bound) group
    launch_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {**{k: v for k, v in os.environ.items() if k not in launch_vars}, "PYTHONWARNINGS": "ignore"}
    two = tmp_path / "two"
    two.mkdir()
    for p in sorted(Path(photo_dir).glob("photo_0[01].png")):
        (two / p.name).write_bytes(p.read_bytes())
    synth = subprocess.run([*PAIRFORGE, "synth", "--source", str(two), "--out", str(tmp_path / "ds"),
                            "--executor", "inline", "--patch-size", "64", "--patches-per-image", "2",
                            "--no-progress", "--device", "cpu"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert synth.returncode == 0, synth.stderr[-2000:]
    url = synth.stdout.strip().splitlines()[-1]
    man = json.loads((Path(url) / "manifest.json").read_text())
    assert len(man["shards"]) == 1 and man["totals"]["samples"] == 4

    out = tmp_path / "run"
    train = subprocess.run([*PAIRFORGE, "train", "--preset", "tiny", "--data", url, "--out", str(out),
                            "--steps", "2", "--val-every", "2", "--perceptual-backbone", "random"],
                           capture_output=True, text=True, env=env, timeout=360)
    assert train.returncode == 0, (train.stdout[-2000:], train.stderr[-3000:])
    assert "validating on the last 1 sample(s) of shard-000000.tar" in train.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["train_samples"] == 3 and run["held_out_samples"] == 1 and run["held_out_shards"] == 0
    val = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert val and all(v["n"] == 1 for v in val)
    assert "1 sample(s) held out" in (out / "report.md").read_text()


def test_patches_smaller_than_the_crop_stop_before_any_rank_starts(tmp_path):
    """The README path once trained d3sr's 512 crops on 256² patches without a word."""
    ds = tmp_path / "ds"
    ds.mkdir()
    manifest = {"format": "pairforge-shards-v1", "dataset_id": "x", "hr_size": 64, "scale": 4,
                "totals": {"samples": 4}, "shards": [{"name": "shard-000000.tar", "count": 4, "bytes": 1, "sha256": "x"}]}
    (ds / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    proc = subprocess.run([*PAIRFORGE, "train", "--preset", "tiny", "--data", str(ds), "--out", str(out),
                           "--crop-size", "128", "--steps", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "HR patches are 64×64 but data.crop_size is 128" in proc.stderr
    assert "--crop-size 64" in proc.stderr and "--patch-size 128" in proc.stderr
    assert not out.exists()  # nothing written, nothing to block the next run
    missing = subprocess.run([*PAIRFORGE, "train", "--preset", "tiny", "--data", str(tmp_path / "nope"),
                              "--out", str(out), "--steps", "1"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no readable manifest.json" in missing.stderr
