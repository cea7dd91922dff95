"""`pairforge synth` through the real CLI: checks before any work (exit 2, nothing written),
``--dry-run``, ``--json``, a job that makes no pairs (exit 1 with the reason), the shared
``--resume`` spelling, and a leftover of a job that committed nothing not blocking the next run.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
#: a small job: 64 px patches, two per image, in this process
SMALL = ["--executor", "inline", "--patch-size", "64", "--patches-per-image", "2", "--no-progress", "--device", "cpu"]


def synth(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIRFORGE, "synth", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def mixed(photo_dir, tmp_path) -> Path:
    """Two usable photos, two too small for a 64 px patch, an empty file and a non-image."""
    src = tmp_path / "mixed"
    src.mkdir()
    for p in sorted(Path(photo_dir).glob("photo_0[01].png")):
        shutil.copy(p, src / p.name)
    Image.new("RGB", (40, 90), (200, 10, 10)).save(src / "small_a.png")
    Image.new("RGB", (63, 63), (10, 200, 10)).save(src / "small_b.png")
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_bytes(b"<html>not an image</html>")
    return src


@pytest.fixture()
def tiny_only(tmp_path) -> Path:
    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(2):
        Image.new("RGB", (32 + i, 48), (i * 90, 40, 40)).save(src / f"t{i}.png")
    return src


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when we return: nothing listens there


def test_unreachable_ray_address_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    res = synth("--source", "bundled", "--out", str(out), "--ray-address", f"127.0.0.1:{_closed_port()}",
                "--no-progress", timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "cannot reach the Ray cluster" in line and "--ray-address" in line
    assert not out.exists()  # nothing listed into it, nothing to block the next run


def test_ray_address_that_is_not_an_address_is_a_usage_error(tmp_path):
    res = synth("--source", "bundled", "--out", str(tmp_path / "out"), "--ray-address", "ray://head:port")
    assert res.returncode == 2 and "ray://head:port" in res.stderr and "HOST:PORT" in res.stderr


def test_cuda_asked_for_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    res = synth("--source", "bundled", "--out", str(out), "--executor", "inline", "--device", "cuda", timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "CUDA is not available" in res.stderr and "--device" in res.stderr
    assert not out.exists()


def test_dry_run_prints_the_plan_and_writes_nothing(mixed, tmp_path):
    out = tmp_path / "out"
    res = synth("--source", str(mixed), "--out", str(out), *SMALL, "--dry-run", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout
    assert "6 listed, 2 usable, 4 would be skipped" in text
    for name, reason in (("small_a.png", "too_small"), ("small_b.png", "too_small"), ("empty.png", "empty_file"),
                         ("text.jpg", "not_an_image")):
        assert f"skip {name}: {reason}" in text
    assert "pairs:    4 " in text and "shards:   1 " in text and "bytes:    ~" in text and "— new" in text
    assert not out.exists()

    plan = json.loads(synth("--source", str(mixed), "--out", str(out), *SMALL, "--dry-run", "--json").stdout)
    assert plan["usable_inputs"] == 2 and plan["pairs"] == 4 and plan["shards"] == 1 and plan["estimated_bytes"] > 0
    assert res.stdout.strip().splitlines()[-1] == plan["url"]  # the dataset URL last, as after a real run

    # the plan is what the job then does
    real = synth("--source", str(mixed), "--out", str(out), *SMALL, "--json")
    assert real.returncode == 0, real.stderr[-2000:]
    (line,) = real.stdout.strip().splitlines()  # --json: the result is the only line on stdout
    done = json.loads(line)
    assert done["ok"] and done["url"] == plan["url"] and done["dataset_id"] == plan["dataset_id"]
    assert done["pairs"] == plan["pairs"] and done["shards"] == plan["shards"]
    assert done["skipped_by_reason"] == {"empty_file": 1, "not_an_image": 1, "too_small": 2}
    again = synth("--source", str(mixed), "--out", str(out), *SMALL, "--dry-run")
    assert "complete" in again.stdout


def test_a_job_that_makes_no_pairs_fails_and_says_why(tiny_only, tmp_path):
    out = tmp_path / "out"
    dry = synth("--source", str(tiny_only), "--out", str(out), *SMALL, "--dry-run")
    assert dry.returncode == 1 and "no pairs" in dry.stderr and not out.exists()

    res = synth("--source", str(tiny_only), "--out", str(out), *SMALL)
    assert res.returncode == 1, res.stdout + res.stderr[-2000:]
    assert "produced no pairs" in res.stderr and "too_small 2" in res.stderr
    assert "--patch-size" in res.stderr and "--min-size-policy upscale" in res.stderr
    as_json = synth("--source", str(tiny_only), "--out", str(out), *SMALL, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_resume_has_one_spelling_and_a_job_that_committed_nothing_blocks_nothing(photo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(Path(photo_dir) / "photo_00.png", src / "photo_00.png")
    out = tmp_path / "out"
    first = synth("--source", str(src), "--out", str(out), *SMALL, "--resume", "auto")
    assert first.returncode == 0, first.stderr[-2000:]
    ds = Path(first.stdout.strip().splitlines()[-1])
    # what a job leaves when it stops before committing a shard (Ray did not come up, the store
    # refused every tar): its job.json and nothing else
    for f in ds.iterdir():
        if f.name != "job.json":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    again = synth("--source", str(src), "--out", str(out), *SMALL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().splitlines()[-1] == str(ds) and (ds / "manifest.json").is_file()
    # an unfinished job with committed shards still needs --resume, in either spelling
    (ds / "manifest.json").unlink()
    refused = synth("--source", str(src), "--out", str(out), *SMALL)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = synth("--source", str(src), "--out", str(out), *SMALL, "--resume")
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed"), resumed.stderr[-2000:]
