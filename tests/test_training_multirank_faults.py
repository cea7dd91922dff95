"""Two ranks launched the way a cluster launches them, and one of them killed.

The launch commands are the ones ``pairforge train --print-launch hostfile|torchrun --ranks 2``
prints, run as printed (gloo on CPU, a localhost hostfile, ``torchrun --standalone``), so these
scenarios also check that the printed commands train 2 ranks to completion.

Each scenario (a module fixture, shared by its assertions):

1. the printed command trains 2 ranks (checkpoint every 2 steps) until a few checkpoints exist;
2. one rank's main process is ``kill -9``-ed: the whole job must exit within
   ``JOB_MUST_EXIT_WITHIN_S`` with a line naming the dead rank, and leave no process behind;
3. (torchrun) the newest checkpoint gets a truncated file and the one before loses its
   completion marker: the resume must name both and use the one before them;
4. the printed command with ``--resume auto`` continues from the newest intact checkpoint: same
   step counter, the data position and RNGs restored (the steps it re-runs reproduce the killed
   run's losses), no duplicate steps, and it trains to the end on both ranks.

Processes are found through /proc (a rank is a process with RANK in its environment whose
parent has none; its DataLoader workers inherit RANK). Whatever survives is killed by pid.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from proctools import descendants, environ, kill_all, process_table, wait_until_gone

from pairforge.training.runtime.launch import PEER_LOST_EXIT_CODE, LaunchError, first_failure, free_port, read_hostfile

JOB_MUST_EXIT_WITHIN_S = 60.0  # hang detection only: the launchers stop in seconds
PROCESSES_GONE_WITHIN_S = 30.0
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "PAIRFORGE_LAUNCHER_PID", "OMP_NUM_THREADS")
FAST = ["--preset", "tiny", "--workers", "1", "--batch-size", "2", "--crop-size", "32", "--val-every", "0",
        "--ckpt-every", "2", "--log-every", "1", "--perceptual-backbone", "random",
        "--set", "log.progress_bar=false", "--set", "log.tensorboard=false"]
PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]


def user_env() -> dict[str, str]:
    """A user's shell: no launch variables of this test process; the venv's launchers on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONWARNINGS"] = "ignore"
    return env


# ------------------------------------------------------------------------------ /proc helpers
def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the ranks' main processes under ``launcher``."""
    ranks = {}
    for pid in descendants(launcher):
        env = environ(pid)
        parent = process_table().get(pid, (0, ""))[0]
        if b"RANK" in env and b"RANK" not in environ(parent):
            ranks[int(env[b"RANK"])] = pid
    return ranks


# ------------------------------------------------------------------------------ the run directory
def metrics(out: Path) -> list[dict]:
    """metrics.jsonl records in file order (a torn last line of a killed writer is skipped)."""
    path = out / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def marker(out: Path, step: int) -> Path:
    return out / "checkpoints" / "state" / f"step{step:08d}" / "state.json"


def checkpointed_steps(out: Path) -> list[int]:
    """Steps with a completion marker, newest first."""
    state = out / "checkpoints" / "state"
    return sorted((int(p.parent.name[4:]) for p in state.glob("step*/state.json")), reverse=True)


# ------------------------------------------------------------------------------ launching
def printed_command(mode: str, data: str, out: Path, *extra: str, hostfile: Path | None = None) -> list[str]:
    """What ``pairforge train ... --print-launch MODE --ranks 2`` prints, split like a shell would."""
    flags = ["--hostfile", str(hostfile)] if hostfile else []
    res = subprocess.run([*PAIRFORGE, "train", "--data", data, "--out", str(out), *FAST, *extra,
                          "--print-launch", mode, "--ranks", "2", *flags],
                         capture_output=True, text=True, env=user_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.strip().splitlines()  # the command and nothing else
    return shlex.split(line)


@dataclass
class Finished:
    rc: int | None  # None: still running at the deadline (then killed)
    output: str


def run_bounded(cmd: list[str], timeout_s: float, cwd: Path) -> Finished:
    proc = subprocess.Popen(cmd, cwd=cwd, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return Finished(proc.returncode, output)
    except subprocess.TimeoutExpired:
        kill_all(descendants(proc.pid))
        proc.kill()
        return Finished(None, proc.communicate()[0])


def wait_for_step(out: Path, step: int, launcher: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while max((r["step"] for r in metrics(out)), default=0) < step:
        if launcher.poll() is not None:
            pytest.fail(f"the job exited ({launcher.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no step {step} after {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


# ------------------------------------------------------------------------------ the scenarios
@dataclass
class KilledRank:
    out: Path
    victim: int
    victim_pid: int
    exit: Finished             # the job after the kill
    exited_after_s: float | None
    survivors: set[int]        # processes of the job still running after PROCESSES_GONE_WITHIN_S
    before: dict[int, dict]    # step -> metrics record of the killed run
    damaged: list[int]         # checkpoints the test damaged
    resumed_from: int          # the newest checkpoint left intact
    resume: Finished           # the printed command with --resume auto
    target: int


def killed_rank(mode: str, training_pairs: str, work: Path, victim: int, kill_after_step: int, damage: bool,
                extra: tuple[str, ...] = ()) -> KilledRank:
    """Run one scenario (see the module docstring) and record what happened."""
    out, log = work / "run", work / "job.log"
    hostfile = None
    if mode == "hostfile":
        hostfile = work / "hostfile"
        hostfile.write_text("localhost slots=2\n")
    port = ("--master-port", str(free_port()))
    first = printed_command(mode, training_pairs, out, "--steps", "200", *extra, *port, hostfile=hostfile)
    with log.open("w") as sink:
        job = subprocess.Popen(first, cwd=work, env=user_env(), stdout=sink, stderr=subprocess.STDOUT)
    family: set[int] = set()
    try:
        wait_for_step(out, kill_after_step, job, log)
        ranks = rank_pids(job.pid)
        assert sorted(ranks) == [0, 1], f"expected ranks 0 and 1 under {first[0]}, found {ranks}"
        family = descendants(job.pid)
        before = {r["step"]: r for r in metrics(out)}
        os.kill(ranks[victim], signal.SIGKILL)
        killed = time.monotonic()
        try:
            job.wait(timeout=JOB_MUST_EXIT_WITHIN_S)
            exited_after = time.monotonic() - killed
        except subprocess.TimeoutExpired:
            exited_after = None
        survivors = wait_until_gone(family, PROCESSES_GONE_WITHIN_S)
    finally:
        if job.poll() is None:
            family |= descendants(job.pid)
            job.kill()
            job.wait()
        kill_all(family)
    exit_ = Finished(job.returncode if exited_after is not None else None, log.read_text())

    intact = checkpointed_steps(out)
    damaged: list[int] = []
    if damage:  # newest: a file cut short; the one before: no completion marker
        newest = out / "checkpoints" / "G" / f"step{intact[0]:08d}"
        victim_file = sorted(newest.glob("*optim_states.pt"))[-1]
        os.truncate(victim_file, victim_file.stat().st_size // 2)
        marker(out, intact[1]).unlink()
        damaged, intact = intact[:2], intact[2:]
    resumed_from = intact[0]
    target = resumed_from + 2
    again = printed_command(mode, training_pairs, out, "--steps", str(target), "--resume", "auto", *extra, *port,
                            hostfile=hostfile)
    resume = run_bounded(again, timeout_s=300, cwd=work)
    return KilledRank(out, victim, ranks[victim], exit_, exited_after, survivors, before, damaged, resumed_from,
                      resume, target)


@pytest.fixture(scope="module")
def deepspeed_killed(training_pairs, tmp_path_factory) -> KilledRank:
    """DeepSpeed launcher, localhost hostfile: rank 0 (the store's host) is killed."""
    return killed_rank("hostfile", training_pairs, tmp_path_factory.mktemp("ds"), victim=0, kill_after_step=3,
                       damage=False)


@pytest.fixture(scope="module")
def torchrun_killed(training_pairs, tmp_path_factory) -> KilledRank:
    """torchrun --standalone: rank 1 is killed; two of three checkpoints are then damaged."""
    return killed_rank("torchrun", training_pairs, tmp_path_factory.mktemp("tr"), victim=1, kill_after_step=7,
                       damage=True, extra=("--set", "log.keep_checkpoints=3"))


SCENARIOS = ["deepspeed_killed", "torchrun_killed"]


# ------------------------------------------------------------------------------ the assertions
@pytest.mark.slow  # each scenario: two 2-rank DeepSpeed start-ups on gloo, ~50-120 s on 2 busy cores
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_killed_rank_stops_the_job_naming_it(scenario, request):
    k: KilledRank = request.getfixturevalue(scenario)
    assert k.exited_after_s is not None, (f"the job still ran {JOB_MUST_EXIT_WITHIN_S:.0f} s after kill -9 of "
                                          f"rank {k.victim}:\n{k.exit.output[-3000:]}")
    assert k.exit.rc != 0, k.exit.output[-3000:]
    assert f"rank {k.victim} (pid {k.victim_pid} on host " in k.exit.output, k.exit.output[-3000:]
    assert "died; rank" in k.exit.output
    assert not k.survivors, f"still running {PROCESSES_GONE_WITHIN_S:.0f} s after the job exited: {k.survivors}"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_resume_continues_from_the_newest_intact_checkpoint(scenario, request):
    k: KilledRank = request.getfixturevalue(scenario)
    out = k.resume.output
    assert k.resume.rc == 0, out[-3000:]
    assert f"resumed from step{k.resumed_from:08d} (step {k.resumed_from})" in out, out[-3000:]
    assert [r["step"] for r in metrics(k.out)] == list(range(1, k.target + 1))  # no duplicate, none lost
    # the data position and RNG states came back: the steps re-run after the resume are the killed run's
    rerun = [r for r in metrics(k.out) if r["step"] > k.resumed_from and r["step"] in k.before]
    assert rerun, f"the killed run logged no step after {k.resumed_from}"
    for record in rerun:
        old = k.before[record["step"]]
        assert record["loss_g"] == pytest.approx(old["loss_g"], rel=1e-5), record["step"]
        assert record["loss_d"] == pytest.approx(old["loss_d"], rel=1e-5), record["step"]
    assert all(r["samples"] == r["step"] * 2 * 2 for r in metrics(k.out))  # batch 2 × 2 ranks
    final = json.loads(marker(k.out, k.target).read_text())
    assert final["world"] == 2 and final["batches_consumed"] == k.target and final["samples_seen"] == 4 * k.target
    assert json.loads((k.out / "checkpoints" / "latest.json").read_text())["step"] == k.target
    assert json.loads((k.out / "run.json").read_text())["world_size"] == 2
    assert (k.out / "export").is_dir() and (k.out / "report.md").is_file()  # trained to completion


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_damaged_checkpoints_are_named_skipped_and_set_aside(torchrun_killed):
    k = torchrun_killed
    newest, before_it = k.damaged
    warning = next((ln for ln in k.resume.output.splitlines() if "skipped damaged checkpoint" in ln), "")
    assert f"step{newest:08d}: G/step{newest:08d}/" in warning and "bytes, " in warning, k.resume.output[-3000:]
    assert f"step{before_it:08d}: it has no completion marker" in warning, warning
    assert f"resuming from step{k.resumed_from:08d} instead" in warning, warning
    damaged = k.out / "checkpoints" / "damaged"
    assert {p.name for p in damaged.iterdir()} == {f"step{newest:08d}", f"step{before_it:08d}"}


# ------------------------------------------------------------------------------ --print-launch refusals
def _print_launch(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``--print-launch`` on a stand-in dataset (a manifest and a 1-byte shard: the checks pass,
    nothing trains)."""
    ds = tmp_path / "ds"
    ds.mkdir(exist_ok=True)
    (ds / "shard-000000.tar").write_bytes(b"x")
    (ds / "manifest.json").write_text(json.dumps({
        "format": "pairforge-shards-v1", "dataset_id": "stand-in", "hr_size": 64, "scale": 4,
        "totals": {"samples": 4}, "shards": [{"name": "shard-000000.tar", "count": 4, "bytes": 1, "sha256": "x"}]}))
    return subprocess.run([*PAIRFORGE, "train", "--data", str(ds), "--out", str(tmp_path / "run"), *FAST,
                           "--print-launch", *args], capture_output=True, text=True, env=user_env(), timeout=120)


def test_print_launch_refuses_what_would_not_run(tmp_path):
    missing = _print_launch("hostfile", "--hostfile", str(tmp_path / "nope"), tmp_path=tmp_path)
    assert missing.returncode == 2 and not missing.stdout
    assert missing.stderr.strip() == f"pairforge train: error: --hostfile {tmp_path / 'nope'}: no such file (one " \
                                     "`HOST slots=N` line per node, e.g. clusters/templates/hostfile.example)"
    no_file = _print_launch("hostfile", tmp_path=tmp_path)
    assert no_file.returncode == 2 and "needs --hostfile FILE" in no_file.stderr
    two_nodes = _print_launch("torchrun", "--nnodes", "2", tmp_path=tmp_path)
    assert two_nodes.returncode == 2 and "--nnodes 2 needs --master-addr HOST" in two_nodes.stderr
    assert len(two_nodes.stderr.strip().splitlines()) == 1


def test_print_launch_spells_out_ranks_nodes_and_address(tmp_path):
    res = _print_launch("torchrun", "--nnodes", "2", "--ranks", "4", "--master-addr", "node-001",
                        "--master-port", "29411", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout)
    assert cmd[:11] == ["torchrun", "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", "node-001:29411", "--rdzv-id", "pairforge"]
    assert "$" not in res.stdout and "--ranks" not in cmd and "--master-addr" not in cmd and "--nnodes" not in cmd[11:]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode-001 slots=4\nnode-002 slots=4\n")
    ds = _print_launch("hostfile", "--hostfile", str(hostfile), "--ranks", "8", tmp_path=tmp_path)
    assert ds.returncode == 0, ds.stderr
    cmd = shlex.split(ds.stdout)
    assert cmd[:4] == ["deepspeed", "--hostfile", str(hostfile), "--no_local_rank"]
    assert "--no_ssh_check" not in cmd  # real nodes: DeepSpeed starts them over ssh
    i = cmd.index("--module")
    assert cmd[i + 1:i + 3] == ["pairforge.clusters.cli", "train"] and "--hostfile" not in cmd[i:]
    wrong = _print_launch("hostfile", "--hostfile", str(hostfile), "--ranks", "2", tmp_path=tmp_path)
    assert wrong.returncode == 2 and "lists 8 slot(s)" in wrong.stderr


def test_print_launch_checks_what_every_rank_would_check_first(tmp_path):
    """A command the ranks would refuse is not printed: the same one-line refusal, exit 2."""
    res = subprocess.run([*PAIRFORGE, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"),
                          *FAST, "--print-launch", "torchrun", "--ranks", "2"],
                         capture_output=True, text=True, env=user_env(), timeout=120)
    assert res.returncode == 2 and not res.stdout and "no readable manifest.json" in res.stderr, res.stderr


def test_hostfile_lines_are_checked(tmp_path):
    bad = tmp_path / "hosts"
    bad.write_text("node-001 slots=4\nnode-002 gpus=4\n")
    with pytest.raises(LaunchError, match="line 2: expected `HOST slots=N`"):
        read_hostfile(bad)
    bad.write_text("# nothing\n\n")
    with pytest.raises(LaunchError, match="lists no host"):
        read_hostfile(bad)
    bad.write_text("localhost slots=2  # this machine\n")
    assert read_hostfile(bad) == {"localhost": 2}


# ------------------------------------------------------------------------------ the watch alone
def test_the_first_failure_is_the_cause_not_its_consequences():
    assert first_failure([None, None]) is None
    assert first_failure([PEER_LOST_EXIT_CODE, -9]) == (1, -9)
    assert first_failure([143, None, 1]) == (2, 1)
    assert first_failure([PEER_LOST_EXIT_CODE, None]) == (0, PEER_LOST_EXIT_CODE)


_WATCHER = textwrap.dedent("""
    import os, sys, time
    from pairforge.training.runtime.launch import PeerWatch, this_rank
    sibling = int(sys.argv[1])
    me, other = this_rank(0), this_rank(1)
    other = type(other)(1, sibling, int(open(f"/proc/{sibling}/stat").read().rpartition(")")[2].split()[19]),
                        me.machine)
    PeerWatch(0, [me, other], poll_s=float(sys.argv[2])).start()
    if os.fork() == 0:  # a DataLoader-like forked child: SIGTERM must end it alone, by default action
        print(os.getpid(), flush=True)  # from the child's own code: after the fork hooks ran
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
""")


def _watcher(poll_s: float) -> tuple[subprocess.Popen, subprocess.Popen, int]:
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(sibling.pid), str(poll_s)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = int(watcher.stdout.readline())
    return sibling, watcher, child


def test_a_rank_stops_when_a_peer_on_its_machine_dies():
    sibling, watcher, child = _watcher(poll_s=0.1)
    try:
        os.kill(child, signal.SIGTERM)  # the forked child dies alone; the watcher keeps running
        assert not wait_until_gone({child}, 10) and watcher.poll() is None
        sibling.kill()
        sibling.wait()
        assert watcher.wait(timeout=20) == PEER_LOST_EXIT_CODE
        err = watcher.stderr.read()
        assert f"rank 1 (pid {sibling.pid} on host" in err and "rank 0 stops too" in err, err
    finally:
        kill_all({sibling.pid, watcher.pid, child})


def test_sigterm_names_a_dead_peer_before_the_watch_sees_it():
    sibling, watcher, child = _watcher(poll_s=300)  # the poll alone would take minutes
    try:
        sibling.kill()
        sibling.wait()
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=20) == 143
        kill_all({child})  # it holds the stderr pipe open
        err = watcher.stderr.read()
        assert f"rank 1 (pid {sibling.pid} on host" in err and "SIGTERM from its launcher" in err, err
    finally:
        kill_all({sibling.pid, watcher.pid, child})
