"""`pairforge train` through the real CLI: what can be checked is checked before any rank starts
(exit 2 in seconds, one message, nothing written), a previous run is never lost, and ``--json``.

The fast tests stop in the checks, so a stand-in dataset (a manifest only) is enough: the
ranks that would read its shards never start. One slow test trains for real.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
#: tiny, fast, no ImageNet weights needed
FAST = ["--preset", "tiny", "--crop-size", "32", "--batch-size", "2", "--workers", "0", "--val-every", "0",
        "--perceptual-backbone", "random", "--set", "log.progress_bar=false", "--set", "log.tensorboard=false"]


def train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIRFORGE, "train", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def stand_in(tmp_path) -> str:
    """A dataset manifest and a 1-byte file as its shard: passes the dataset checks (the shard is
    there at its recorded size), could not train."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "shard-000000.tar").write_bytes(b"x")
    (ds / "manifest.json").write_text(json.dumps({
        "format": "pairforge-shards-v1", "dataset_id": "stand-in", "hr_size": 64, "scale": 4,
        "totals": {"samples": 4}, "shards": [{"name": "shard-000000.tar", "count": 4, "bytes": 1, "sha256": "x"}]}))
    return str(ds)


def previous_run(out: Path, *, world: int = 2, step: int = 4) -> dict[str, str]:
    """A run directory as a killed run leaves it: logged steps and a checkpoint by ``world`` ranks."""
    tag = f"step{step:08d}"
    state = out / "checkpoints" / "state" / tag
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"step": step, "tag": tag, "world": world, "workers": 0}))
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"tag": tag, "step": step}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, step + 1)))
    return {p.name: p.read_text() for p in (out / "metrics.jsonl", out / "checkpoints" / "latest.json")}


def untouched(out: Path, before: dict[str, str]) -> bool:
    return (out / "metrics.jsonl").read_text() == before["metrics.jsonl"] and \
        (out / "checkpoints" / "latest.json").read_text() == before["latest.json"]


def test_a_previous_run_is_refused_without_resume_or_overwrite(stand_in, tmp_path):
    out = tmp_path / "run"
    before = previous_run(out)
    res = train(*FAST, "--data", stand_in, "--out", str(out))
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "holds a previous run (a checkpoint at step 4 and 4 logged step(s))" in line
    assert "--resume auto" in line and "--overwrite" in line
    assert untouched(out, before) and not (out / "run.lock").exists()  # no rank started, nothing locked


def test_a_run_that_stopped_before_its_first_step_does_not_block(stand_in, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "job.json").write_text("{}")
    (out / "run.lock").write_text("")
    (out / "metrics.jsonl").write_text("")
    res = train(*FAST, "--data", stand_in, "--out", str(out), "--weights-dir", str(tmp_path / "no-weights"),
                "--perceptual-backbone", "imagenet")
    # past the run-directory check: the next check (weights) is what stops it
    assert res.returncode == 2 and "previous run" not in res.stderr
    assert "No ImageNet weights" in res.stderr, res.stderr[-3000:]


def test_resume_alone_takes_the_checkpoints_rank_count(stand_in, tmp_path):
    out = tmp_path / "run"
    before = previous_run(out, world=2)
    res = train(*FAST, "--data", stand_in, "--out", str(out), "--resume", "--perceptual-backbone", "imagenet",
                "--weights-dir", str(tmp_path / "no-weights"))
    assert "resuming the checkpoint at step 4 on its 2 ranks" in res.stderr, res.stderr[-3000:]
    assert res.returncode == 2 and untouched(out, before)  # stopped by the (missing) weights, before any rank


def test_resume_on_another_rank_count_is_refused_with_the_command_that_resumes(stand_in, tmp_path):
    out = tmp_path / "run"
    before = previous_run(out, world=2)
    res = train(*FAST, "--data", stand_in, "--out", str(out), "--resume", "auto", "--ranks", "1")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "written by 2 rank(s)" in res.stderr and "--ranks 1" in res.stderr
    command = res.stderr.split("resume it with: ", 1)[1].strip()
    assert command.startswith("pairforge train ") and command.endswith("--resume auto --ranks 2")
    assert f"--out {out}" in command and "--ranks 1" not in command
    assert untouched(out, before)


def test_resume_and_overwrite_together_are_a_usage_error(stand_in, tmp_path):
    out = tmp_path / "run"
    before = previous_run(out)
    res = train(*FAST, "--data", stand_in, "--out", str(out), "--resume", "--overwrite")
    assert res.returncode == 2 and "pass one of them" in res.stderr
    assert untouched(out, before)


def test_missing_perceptual_weights_stop_before_any_rank(stand_in, tmp_path):
    out = tmp_path / "run"
    res = train(*FAST, "--data", stand_in, "--out", str(out), "--perceptual-backbone", "imagenet",
                "--weights-dir", str(tmp_path / "empty"))
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.startswith("pairforge train: error: No ImageNet weights for 'vgg16'")
    assert "Traceback" not in res.stderr and not out.exists()


def test_missing_pretrained_folder_stops_before_any_rank(stand_in, tmp_path):
    out = tmp_path / "run"
    res = train("--preset", "d3sr-sd21", "--data", stand_in, "--out", str(out), "--crop-size", "64",
                "--perceptual-backbone", "random", "--set", f"generator.pretrained_path={tmp_path / 'sd21'}")
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.startswith(f"pairforge train: error: generator.pretrained_path: {tmp_path / 'sd21'} is missing vae/, unet/")
    assert "Traceback" not in res.stderr and not out.exists()


def test_a_bad_set_is_a_usage_error(stand_in, tmp_path):
    res = train(*FAST, "--data", stand_in, "--out", str(tmp_path / "run"), "--set", "steps")
    assert res.returncode == 2 and "--set 'steps': expected KEY=VALUE" in res.stderr


@pytest.mark.slow  # two real tiny trainings (DeepSpeed start-up on gloo): ~3 min on 2 cores
@pytest.mark.timeout(600)
def test_overwrite_starts_afresh_and_json_is_the_result(photo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(Path(photo_dir).glob("photo_0[0-3].png")):
        shutil.copy(p, src / p.name)
    made = subprocess.run([*PAIRFORGE, "synth", "--source", str(src), "--out", str(tmp_path / "pairs"), "--executor",
                           "inline", "--patch-size", "64", "--patches-per-image", "2", "--images-per-shard", "2",
                           "--no-progress", "--device", "cpu", "--json"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    data = json.loads(made.stdout)["url"]
    out = tmp_path / "run"
    previous_run(out, world=1, step=7)
    (out / "export").mkdir()
    (out / "export" / "stale.safetensors").write_text("old")

    res = train(*FAST, "--data", data, "--out", str(out), "--steps", "1", "--ckpt-every", "1", "--overwrite", "--json",
                timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    (line,) = res.stdout.strip().splitlines()  # rank logs went to stderr
    result = json.loads(line)
    assert result["ok"] and result["rc"] == 0 and result["step"] == 1 and result["ranks"] == 1
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 1
    assert not (out / "checkpoints" / "state" / "step00000007").exists()
    assert not (out / "export" / "stale.safetensors").exists()
    # DeepSpeed's start-up chatter (op-builder compiler probes, the shm op notice) is in the
    # rank's log file, not on the terminal
    rank_log = (out / "logs" / "rank0.log").read_text()
    assert "pairforge.third_party" in rank_log or "compilers" in rank_log, rank_log[-2000:]
    for chatter in ("compilers.C.base", "built successfully", "Setting accelerator", "No CUDA runtime"):
        assert chatter not in res.stderr

    # the run just made is now a previous run: refused, then continued with `--resume` alone
    assert train(*FAST, "--data", data, "--out", str(out), "--steps", "2").returncode == 2
    cont = train(*FAST, "--data", data, "--out", str(out), "--steps", "2", "--ckpt-every", "1", "--resume", "--json",
                 timeout=400)
    assert cont.returncode == 0, cont.stderr[-3000:]
    assert json.loads(cont.stdout)["step"] == 2 and "resumed from step00000001" in cont.stderr
