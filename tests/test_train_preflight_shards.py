"""A dataset shard that is missing or damaged, through the real ``pairforge train`` command.

Before any rank starts: every shard the manifest lists must be in the store at its recorded
size (one stat/HEAD per shard), else one line naming the shards and exit 2, for a launch
(`--ranks 2`), for ``--print-launch`` and for the Python API ``train()``. The old code started
the ranks, validated, logged rows, then ended with a 41-line traceback (rc 1, minutes later).

During the work: a shard whose bytes change after the check (same size, so only the ranks'
sha256 finds it) stops the run with one line naming it, its traceback in the rank's log, and
exit 1.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from proctools import descendants, kill_all

from pairforge.pipeline.shards import load_manifest
from pairforge.training import train
from pairforge.training.loop.preflight import ShardsUnusable

FAST = ["--preset", "tiny", "--workers", "1", "--batch-size", "2", "--crop-size", "32", "--val-every", "0",
        "--ckpt-every", "0", "--log-every", "1", "--perceptual-backbone", "random",
        "--set", "log.progress_bar=false", "--set", "log.tensorboard=false"]


@pytest.fixture(scope="module")
def pristine(training_pairs: str) -> Path:
    """The session's small real dataset (conftest), which the tests copy before damaging it."""
    path = Path(training_pairs)
    assert len(json.loads((path / "manifest.json").read_text())["shards"]) >= 2
    return path


def _copy(pristine: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    return data, [e["name"] for e in load_manifest(str(data))["shards"]]


def _train(data: Path, out: Path, *extra: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pairforge.clusters.cli", "train", "--data", str(data), "--out", str(out), *FAST,
           *extra]
    proc = subprocess.Popen(cmd, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_all(descendants(proc.pid))
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"train still running after {timeout_s} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_a_deleted_and_a_truncated_shard_are_named_before_any_rank_starts(pristine, tmp_path):
    data, names = _copy(pristine, tmp_path)
    (data / names[0]).unlink()
    with (data / names[1]).open("r+b") as f:
        f.truncate(1000)
    out = tmp_path / "run"
    res = _train(data, out, "--steps", "4", "--ranks", "2")
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"2 of {len(names)} shard(s)" in lines[0]
    assert f"{names[0]} is missing from the store" in lines[0]
    assert f"{names[1]} has 1000 bytes in the store" in lines[0]
    assert not (out / "job.json").exists() and not (out / "logs").exists()  # no rank ever started


def test_print_launch_refuses_a_dataset_with_a_missing_shard(pristine, tmp_path):
    data, names = _copy(pristine, tmp_path)
    (data / names[-1]).unlink()
    res = _train(data, tmp_path / "run", "--steps", "4", "--print-launch", "torchrun", "--ranks", "2")
    assert res.returncode == 2 and res.stdout == "", res.stderr[-3000:]
    assert f"{names[-1]} is missing from the store" in res.stderr and "Traceback" not in res.stderr


def test_the_python_api_refuses_before_writing_anything(pristine, tmp_path):
    data, names = _copy(pristine, tmp_path)
    (data / names[0]).unlink()
    out = tmp_path / "run"
    with pytest.raises(ShardsUnusable, match=f"{names[0]} is missing from the store"):
        train("tiny", data=str(data), out=out, steps=2, ranks=1,
              overrides={"loss.perceptual_backbone": "random", "log.val_every": 0})
    assert not out.exists()


def test_the_python_api_runs_the_commands_checks(pristine, tmp_path):
    """train() makes every check `pairforge train` makes before a rank starts (one preflight):
    before, it checked only the dataset and the run directory, so missing perceptual weights or
    pretrained folders were found by the ranks, after DeepSpeed had started (rc 1, no exception)."""
    from pairforge.training.model.perceptual.weights import PerceptualWeightsMissing
    from pairforge.training.model.pretrained_folders import PretrainedMissing

    out = tmp_path / "run"
    with pytest.raises(PerceptualWeightsMissing, match="No ImageNet weights"):
        train("tiny", data=str(pristine), out=out, steps=2, ranks=1,
              overrides={"loss.perceptual_backbone": "imagenet", "loss.weights_dir": str(tmp_path / "empty")})
    with pytest.raises(PretrainedMissing, match="generator.pretrained_path"):
        train("d3sr-sd21", data=str(pristine), out=out, steps=2, ranks=1,
              overrides={"generator.pretrained_path": str(tmp_path / "sd21"), "data.crop_size": 64,
                         "loss.perceptual_backbone": "random"})
    assert not out.exists()


@pytest.mark.slow  # two real gloo ranks start (DeepSpeed), then one finds the damage
@pytest.mark.timeout(400)
def test_damage_found_while_training_ends_with_one_line_naming_the_shard(pristine, tmp_path):
    """Same size, other bytes: only the ranks' sha256 can find it, once they read the shard."""
    data, names = _copy(pristine, tmp_path)
    for name in names:  # whichever shard a rank reads first is damaged
        path = data / name
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
        path.write_bytes(bytes(raw))
    out = tmp_path / "run"
    res = _train(data, out, "--steps", "50", "--ranks", "2", timeout_s=360)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-5000:]
    named = [line for line in res.stderr.splitlines() if "stopped: damaged shard" in line]
    assert named, res.stderr[-3000:]
    assert any(name in named[0] for name in names) and "traceback in" in named[0], named
    logs = "".join(p.read_text() for p in (out / "logs").glob("rank*.log"))
    assert "Traceback" in logs and "ShardIntegrityError" in logs  # the detail is kept, off the terminal
