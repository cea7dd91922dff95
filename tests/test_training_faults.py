"""Training under real faults: ``kill -9`` of the ``pairforge train`` launcher, and a second train
started on the same ``--out``. Real processes, real signals, real DeepSpeed ranks on gloo.

One scenario (module fixture ``killed_launcher``), then assertions about it:

1. launcher A trains 2 ranks (one DataLoader worker each) on a tiny dataset; once
   ``metrics.jsonl`` shows step 3,
2. a second ``train --resume auto`` on the same ``--out`` is started, once as a launcher and
   once as a cluster rank (RANK/WORLD_SIZE set, trainer in-process): both must refuse,
3. A is ``kill -9``-ed; every process it started (ranks and loader workers, found via /proc)
   must exit within 30 s,
4. ``train --resume auto`` then takes the directory over and continues the curve without
   duplicate or interleaved steps.

Processes are found through /proc; zombies count as exited (in a container nothing may reap
an orphan). Whatever survives a failed run is killed by pid at teardown.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from proctools import children, cmdline, descendants, kill_all, process_table, wait_until_gone

from pairforge.training.runtime.launch import free_port
from pairforge.training.runtime.runlock import RunDirLocked, acquire

EXIT_RUN_DIR_IN_USE = 3
RANKS_MUST_EXIT_WITHIN_S = 30.0
FAST = ["--preset", "tiny", "--workers", "1", "--batch-size", "2", "--crop-size", "32", "--val-every", "0",
        "--ckpt-every", "2", "--log-every", "1", "--perceptual-backbone", "random",
        "--set", "log.progress_bar=false", "--set", "log.tensorboard=false"]


def _train_cmd(data: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pairforge.clusters.cli", "train", "--data", data, "--out", str(out), *FAST, *extra]


def _steps(out: Path) -> list[int]:
    """Logged steps in file order (a torn last line of a killed writer is skipped)."""
    path = out / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            continue
    return steps


def _wait_for_step(out: Path, step: int, launcher: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while max(_steps(out), default=0) < step:
        if launcher.poll() is not None:
            pytest.fail(f"launcher exited ({launcher.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no step {step} in {out / 'metrics.jsonl'} after {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Finished:
    rc: int | None  # None: still running at the deadline (then killed)
    output: str


def _run_bounded(cmd: list[str], timeout_s: float, cwd: Path, env: dict | None = None) -> Finished:
    """Run a command; past ``timeout_s`` kill it and everything it started, and report rc None."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return Finished(proc.returncode, output)
    except subprocess.TimeoutExpired:
        kill_all(descendants(proc.pid))
        proc.kill()
        output, _ = proc.communicate()
        return Finished(None, output)


def _rank_env() -> dict[str, str]:
    """A single cluster rank, as torchrun would set it up (the trainer runs in-process)."""
    env = {k: v for k, v in os.environ.items() if k != "PAIRFORGE_LAUNCHER_PID"}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    return env


# ------------------------------------------------------------------------------ the scenario
@dataclass
class KilledLauncher:
    out: Path
    workdir: Path
    launcher_pid: int
    ranks: dict[int, str]  # pid -> command line, read before the kill
    workers: set[int]
    killed_at: float
    second_launcher: Finished
    second_as_rank: Finished


@pytest.fixture(scope="module")
def killed_launcher(training_pairs, tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    out, log = work / "run", work / "launcher.log"
    with log.open("w") as sink:
        launcher = subprocess.Popen(_train_cmd(training_pairs, out, "--steps", "200", "--ranks", "2"), cwd=work,
                                    stdout=sink, stderr=subprocess.STDOUT)
    family: set[int] = set()
    try:
        _wait_for_step(out, 3, launcher, log, timeout_s=240)
        again = _train_cmd(training_pairs, out, "--steps", "200", "--resume", "auto")
        second_launcher = _run_bounded([*again, "--ranks", "2"], timeout_s=60, cwd=work)
        second_as_rank = _run_bounded(again, timeout_s=90, cwd=work, env=_rank_env())
        assert launcher.poll() is None, f"the first run ended before the kill:\n{log.read_text()[-3000:]}"
        table = process_table()
        ranks = {pid: cmdline(pid) for pid in children(table, {launcher.pid})}
        workers = children(table, set(ranks))
        family = descendants(launcher.pid)
        os.kill(launcher.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        launcher.wait()
        yield KilledLauncher(out, work, launcher.pid, ranks, workers, killed_at, second_launcher, second_as_rank)
    finally:
        if launcher.poll() is None:
            family |= descendants(launcher.pid)
            launcher.kill()
            launcher.wait()
        kill_all(family)


# ------------------------------------------------------------------------------ the assertions
@pytest.mark.slow  # the shared scenario (2 ranks, a second train, a resume): 35-50 s on 2 cores
@pytest.mark.timeout(480)
def test_ranks_and_loader_workers_exit_when_the_launcher_is_killed(killed_launcher):
    k = killed_launcher
    assert len(k.ranks) == 2, f"expected 2 ranks under launcher {k.launcher_pid}, found {k.ranks}"
    job = str(k.out / "job.json")
    assert all(job in cmdline for cmdline in k.ranks.values()), k.ranks
    assert len(k.workers) >= 2, f"expected a DataLoader worker per rank, found {k.workers}"
    left = RANKS_MUST_EXIT_WITHIN_S - (time.monotonic() - k.killed_at)
    survivors = wait_until_gone(set(k.ranks) | k.workers, max(left, 0.0))
    assert not survivors, ("still running " f"{RANKS_MUST_EXIT_WITHIN_S:.0f} s after kill -9 of the launcher: "
                           + "; ".join(f"{pid}: {cmdline(pid)}" for pid in sorted(survivors)))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_second_train_refuses_while_the_first_is_alive(killed_launcher):
    k = killed_launcher
    owner = f"pid {k.launcher_pid} on host {socket.gethostname()}"
    for how, res in (("as a launcher", k.second_launcher), ("as a cluster rank", k.second_as_rank)):
        assert res.rc == EXIT_RUN_DIR_IN_USE, f"second train {how}: rc {res.rc}, not a refusal:\n{res.output[-3000:]}"
        assert f"run directory {k.out} is in use" in res.output and owner in res.output, res.output[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_after_the_kill_takes_over_and_continues_without_duplicate_steps(killed_launcher, training_pairs):
    k = killed_launcher
    left = RANKS_MUST_EXIT_WITHIN_S - (time.monotonic() - k.killed_at)
    survivors = wait_until_gone(set(k.ranks) | k.workers, max(left, 0.0))
    assert not survivors, f"the killed run's processes {sorted(survivors)} are still running"
    resumed_from = json.loads((k.out / "checkpoints" / "latest.json").read_text())["step"]
    assert resumed_from >= 2
    target = resumed_from + 2
    res = _run_bounded(_train_cmd(training_pairs, k.out, "--steps", str(target), "--ranks", "2", "--resume", "auto"),
                       timeout_s=200, cwd=k.workdir)
    assert res.rc == 0, res.output[-3000:]
    assert f"took over run directory {k.out} from pid {k.launcher_pid}" in res.output, res.output[-3000:]
    assert f"resumed from step{resumed_from:08d}" in res.output, res.output[-3000:]
    assert _steps(k.out) == list(range(1, target + 1))
    assert json.loads((k.out / "checkpoints" / "latest.json").read_text())["step"] == target
    assert (k.out / "run.lock").read_text().strip() == ""  # released cleanly: no owner left


# ------------------------------------------------------------------------------ the watchdog alone
_MIDDLE = """
import os, subprocess, sys, time
env = dict(os.environ, PAIRFORGE_LAUNCHER_PID=str(os.getpid()))
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)  # no parent-death signal
print(rank.pid, flush=True)
time.sleep(120)
"""
_RANK = """
import time
from pairforge.training.runtime.launch import watch_launcher
watch_launcher(poll_s=0.1)
print("watching", flush=True)
time.sleep(120)
"""


def test_the_watchdog_alone_ends_a_rank_whose_launcher_was_killed(tmp_path):
    """The portable fallback, without prctl: a rank that only runs watch_launcher still exits."""
    middle = subprocess.Popen([sys.executable, "-c", _MIDDLE, _RANK], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    started: set[int] = set()
    try:
        rank = int(middle.stdout.readline())
        started.add(rank)
        assert middle.stdout.readline().strip() == "watching"
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        assert not wait_until_gone({rank}, 20), f"rank {rank} outlived its launcher {middle.pid}"
    finally:
        kill_all(started)
        if middle.poll() is None:
            middle.kill()
            middle.wait()


# ------------------------------------------------------------------------------ the lock itself
def _foreign_record(path: Path, heartbeat_age_s: float) -> None:
    now = time.time()
    path.write_text(json.dumps({"host": "another-node", "pid": 4242, "started": now - 3600,
                                "command": "pairforge train --out shared/run", "heartbeat": now - heartbeat_age_s}))


def test_a_live_owner_on_another_host_is_refused_and_a_silent_one_taken_over(tmp_path):
    """flock may not reach across hosts on a shared filesystem: the heartbeat decides."""
    _foreign_record(tmp_path / "run.lock", heartbeat_age_s=5)
    with pytest.raises(RunDirLocked) as refused:
        acquire(tmp_path, stale_after_s=120)
    msg = str(refused.value)
    assert "pid 4242 on host another-node" in msg and "cannot check" in msg and str(tmp_path / "run.lock") in msg

    _foreign_record(tmp_path / "run.lock", heartbeat_age_s=600)
    with acquire(tmp_path, "pairforge train test", stale_after_s=120) as lock:
        assert lock.previous is not None and lock.previous.host == "another-node"
        record = json.loads((tmp_path / "run.lock").read_text())
        assert record["pid"] == os.getpid() and record["command"] == "pairforge train test"


def _heartbeat(lock_file: Path) -> float:
    """The recorded heartbeat (re-read when the read overlapped a rewrite)."""
    for _ in range(100):
        try:
            return json.loads(lock_file.read_text())["heartbeat"]
        except json.JSONDecodeError:
            time.sleep(0.01)
    raise AssertionError(f"{lock_file}: no readable owner record")


def test_the_owner_keeps_its_heartbeat_fresh_and_clears_its_record_on_release(tmp_path):
    lock = acquire(tmp_path, "pairforge train test", heartbeat_s=0.05)
    first = _heartbeat(tmp_path / "run.lock")
    deadline = time.monotonic() + 10
    while _heartbeat(tmp_path / "run.lock") == first:
        assert time.monotonic() < deadline, "heartbeat never advanced"
        time.sleep(0.02)
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()} on host"):
        acquire(tmp_path)  # a second open file description conflicts, even in one process
    lock.release()
    assert (tmp_path / "run.lock").read_text().strip() == ""
    with acquire(tmp_path) as again:
        assert again.previous is None
