"""Ctrl-C of ``pairforge train``, as a terminal sends it: SIGINT to the whole process group
(launcher, ranks, DataLoader workers), through the real CLI with two real gloo ranks.

The run must end with exit 130 and one line that names the checkpoint kept and the exact
command that continues it, with no traceback from the launcher or the ranks on the terminal
(a rank's traceback may go to its log file); every process it started must exit; and the
printed command, run as printed (with a smaller ``--steps`` appended so the test stays short),
must resume from that checkpoint. The old code said "a rank failed (exit code 130)", exit 1.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proctools import descendants, kill_all, wait_until_gone

from pairforge.clusters.commands.train import resume_command

FAST = ["--preset", "tiny", "--workers", "1", "--batch-size", "2", "--crop-size", "32", "--val-every", "0",
        "--ckpt-every", "2", "--log-every", "1", "--perceptual-backbone", "random",
        "--set", "log.progress_bar=false", "--set", "log.tensorboard=false"]
RESUME_LINE = re.compile(r"^pairforge train: interrupted; kept the checkpoint at step (\d+) in (\S+); "
                         r"continue with: (pairforge .*)$")


def _latest_step(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_command_replaces_resume_and_overwrite_and_keeps_the_rest():
    argv = ["-v", "train", "--preset", "tiny", "--data", "d a", "--out", "r", "--overwrite", "--ranks", "2",
            "--resume", "--steps", "9"]
    assert resume_command(argv) == ("pairforge -v train --preset tiny --data 'd a' --out r --ranks 2 --steps 9 "
                                    "--resume auto")
    assert resume_command(["train", "--resume=none", "--out", "r"]) == "pairforge train --out r --resume auto"
    assert resume_command(["train", "--resume", "none", "--out", "r"]) == "pairforge train --out r --resume auto"


@pytest.mark.slow  # two ranks to a checkpoint, then a resume: ~1-2 min on 2 loaded cores
@pytest.mark.timeout(600)
def test_ctrl_c_ends_with_one_resume_line_and_the_printed_command_resumes(training_pairs, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pairforge.clusters.cli", "train", "--data", training_pairs, "--out", str(out), *FAST,
           "--steps", "500", "--ranks", "2"]
    stderr_path, stdout_path = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with stderr_path.open("w") as err, stdout_path.open("w") as std:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=std, stderr=err, start_new_session=True)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while _latest_step(out) < 2:
            assert proc.poll() is None, f"train ended ({proc.returncode}) early:\n{stderr_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint after 300 s:\n{stderr_path.read_text()[-3000:]}"
            time.sleep(0.2)
        family = descendants(proc.pid)
        assert len(family) >= 2, f"expected the ranks under the launcher, found {family}"
        before = stderr_path.read_text()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        rc = proc.wait(timeout=60)
        assert not wait_until_gone(family, 30), "processes of the interrupted run still running"
    finally:
        if proc.poll() is None:
            family |= descendants(proc.pid)
            proc.kill()
            proc.wait()
        kill_all(family)

    stderr = stderr_path.read_text()
    after = stderr[len(before):]
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-5000:]
    lines = [line for line in after.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line after Ctrl-C, got:\n{after}"
    match = RESUME_LINE.match(lines[0])
    assert match, lines[0]
    kept, where, command = int(match.group(1)), match.group(2), match.group(3)
    assert kept >= 2 and kept % 2 == 0 and Path(where) == out / "checkpoints"
    assert (out / "checkpoints" / "state" / f"step{kept:08d}").is_dir()
    argv = shlex.split(command)
    assert argv[:2] == ["pairforge", "train"] and argv[-2:] == ["--resume", "auto"] and "--ranks" in argv

    target = kept + 2  # the printed command as is, with --steps lowered so the test ends soon
    res = subprocess.run([sys.executable, "-m", "pairforge.clusters.cli", *argv[1:], "--steps", str(target)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from step{kept:08d}" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, target + 1))
