"""Interrupted jobs resume to byte-identical shards; partial shards are never visible."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from pairforge.pipeline import JobError, SynthConfig, synth
from pairforge.pipeline.shards import read_pairs

INLINE = SynthConfig.from_dict({"dataset": {"images_per_shard": 2, "patch": {"size": 64, "per_image": 2}},
                                "run": {"executor": "inline", "progress": False}})


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def outputs(url: str) -> dict[str, str]:
    return {n: sha(os.path.join(url, n)) for n in sorted(os.listdir(url))
            if n.endswith(".tar") or n in ("manifest.json", "job.json")}


def test_resume_after_lost_commits_partial_tmp_and_truncated_tar(tmp_path, photo_dir):
    ref = synth(str(photo_dir), str(tmp_path / "ref"), INLINE)
    run = synth(str(photo_dir), str(tmp_path / "run"), INLINE)
    expected = outputs(ref.url)
    assert outputs(run.url) == expected and len(ref.manifest["shards"]) == 6
    # simulate a crash mid-job: manifest not yet written, two commits lost, one tar truncated by
    # a dying writer (its marker says otherwise), one shard caught mid-write (tmp file only)
    d = run.url
    os.remove(os.path.join(d, "manifest.json"))
    os.remove(os.path.join(d, "shard-000001.stats.json"))
    os.remove(os.path.join(d, "shard-000003.stats.json"))
    with open(os.path.join(d, "shard-000002.tar"), "r+b") as f:
        f.truncate(3000)
    os.remove(os.path.join(d, "shard-000004.tar"))
    os.remove(os.path.join(d, "shard-000004.stats.json"))
    with open(os.path.join(d, "shard-000004.tar.tmp-deadbeef"), "wb") as f:
        f.write(b"\0" * 1234)
    with pytest.raises(FileNotFoundError, match="--resume"):
        list(read_pairs(d))  # no manifest: not a usable dataset yet
    with pytest.raises(JobError, match="--resume"):
        synth(str(photo_dir), str(tmp_path / "run"), INLINE)
    res = synth(str(photo_dir), str(tmp_path / "run"), INLINE.replace(**{"run.resume": True}))
    assert res.status == "resumed"
    assert sorted(res.shards_written) == ["shard-000001.tar", "shard-000002.tar", "shard-000003.tar",
                                          "shard-000004.tar"]
    assert outputs(d) == expected
    assert not [n for n in os.listdir(d) if ".tmp-" in n]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pairforge.clusters.cli", "synth", *args]


def test_killed_cli_job_resumes_byte_identical(tmp_path, photo_dir):
    """SIGKILL the whole process group (driver + its embedded Ray) mid-job, then --resume."""
    args = ["--source", str(photo_dir), "--out", str(tmp_path / "out"), "--patch-size", "128",
            "--patches-per-image", "6", "--images-per-shard", "1", "--workers", "1", "--no-progress"]
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray_tmp = tempfile.mkdtemp(prefix="pfk-", dir="/tmp")  # the killed Ray cannot clean up after itself
    env = {**os.environ, "PAIRFORGE_RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen(_cli(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    out_root = tmp_path / "out"
    killed = False
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            stats = list(out_root.glob("*/*.stats.json"))
            if len(stats) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert killed, "job finished before it could be interrupted: " + proc.stderr.read().decode()[-2000:]
    (ds,) = list(out_root.iterdir())
    assert not (ds / "manifest.json").exists()
    done_before = len(list(ds.glob("*.stats.json")))
    assert done_before < 12

    again = subprocess.run(_cli(*args), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = subprocess.run(_cli(*args, "--resume"), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == str(ds)
    assert not [n for n in os.listdir(ds) if ".tmp-" in n]

    big = INLINE.replace(**{"dataset.patch.size": 128, "dataset.patch.per_image": 6, "dataset.images_per_shard": 1})
    ref = synth(str(photo_dir), str(tmp_path / "ref"), big)
    assert os.path.basename(ref.url) == ds.name
    assert outputs(str(ds)) == outputs(ref.url)
