"""`pairforge synth` interrupted, killed, or failing, through the real CLI on the embedded Ray.

* Ctrl-C (SIGINT to the process group, as a terminal sends it): exit 130, one line saying what
  was kept and the exact command that continues, no traceback; that command finishes the
  dataset, and sweeps a Ray session left by a killed driver on its way.
* ``kill -9`` of the driver: no process of its Ray session and no ``pfray-*`` folder is left
  within a bounded time (the session's watchdog; pipeline/raysession.py).
* A shard whose upload keeps failing (S3 ``503 SlowDown`` through tests/faultproxy.py): exit 1,
  no dataset URL on stdout, one line for the failed shard and no traceback or worker output on
  the terminal; what the workers printed is in the dataset's log file.

Every run gets its own Ray temp parent (``PAIRFORGE_RAY_TMPDIR``), so "the session's
processes" are those holding a file in, or naming, a folder under it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from proctools import kill_all, process_table

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
REPO = Path(__file__).resolve().parents[1]
#: 12 shards of one photo each, 12 patches apiece: a run long enough to interrupt after its first commit
LONG = ["--patch-size", "96", "--patches-per-image", "12", "--images-per-shard", "1", "--workers", "1",
        "--no-progress", "--device", "cpu"]
#: how long a killed driver's Ray processes may outlive it
CLEANUP_BOUND_S = 30.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def ray_parent():
    """A short private parent for the embedded Ray's temp folder (unix socket paths are limited)."""
    parent = tempfile.mkdtemp(prefix="pfi-", dir="/tmp")
    yield parent
    kill_all(set(session_pids(parent)))
    shutil.rmtree(parent, ignore_errors=True)


def session_pids(parent: str) -> list[int]:
    """Live processes of any Ray session under ``parent``: they name it on their command line or
    hold a file in it (Ray renames its processes, e.g. ``ray::DashboardAgent``, but each keeps
    its session's log files open)."""
    inside = parent.rstrip("/") + "/"
    found = []
    for pid, (_, state) in process_table().items():
        if pid == os.getpid() or state in ("Z", "X"):
            continue
        try:
            if inside in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(pid)
                continue
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(inside) for fd in os.listdir(f"/proc/{pid}/fd")):
                found.append(pid)
        except OSError:
            continue
    return found


def start(args: list[str], ray_parent: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([*PAIRFORGE, "synth", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "PAIRFORGE_RAY_TMPDIR": ray_parent, **env})


def wait_for_first_commit(proc: subprocess.Popen, out: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(out.glob("*/*.stats.json")):
        if proc.poll() is not None:
            pytest.fail("synth ended before its first commit: " + proc.stderr.read()[-3000:])
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no shard committed within the time limit")
        time.sleep(0.05)


def wait_until_clean(parent: str, timeout_s: float) -> tuple[list[int], list[str]]:
    """Session processes and folders still under ``parent`` after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left, folders = session_pids(parent), os.listdir(parent)
        if (not left and not folders) or time.monotonic() > deadline:
            return left, folders
        time.sleep(0.25)


def test_ctrl_c_says_what_was_kept_and_its_command_finishes_the_dataset(photo_dir, tmp_path, ray_parent):
    out = tmp_path / "out"
    args = ["--source", str(photo_dir), "--out", str(out), *LONG]
    proc = start(args, ray_parent)
    wait_for_first_commit(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("synth did not end within 120 s of Ctrl-C")

    assert proc.returncode == 130, stderr[-3000:]
    assert stdout == ""
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    (line,) = [ln for ln in stderr.splitlines() if ln.strip()]
    (ds,) = [p for p in out.iterdir() if p.is_dir()]
    kept = len(list(ds.glob("*.stats.json")))
    assert f"interrupted: {kept} of 12 shards committed and kept in {ds}" in line, line
    assert "manifest.json" not in os.listdir(ds)
    assert wait_until_clean(ray_parent, CLEANUP_BOUND_S) == ([], []), "Ctrl-C left Ray processes or its folder"

    command = shlex.split(line.split("; continue with: ", 1)[1])
    assert command[:2] == ["pairforge", "synth"] and command[-1] == "--resume"
    assert command[1:-1] == ["synth", *args]  # the user's own arguments, then --resume

    # a session a killed driver left behind (its watchdog killed too): the next run removes it
    stale = Path(ray_parent) / "pfray-stale"
    stale.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (stale / "driver").write_text(f"{gone.pid} 1\n")
    orphan = subprocess.Popen(["sleep", "600"], env={**os.environ, "PAIRFORGE_RAY_SESSION": str(stale)},
                              start_new_session=True)
    try:
        resumed = subprocess.run([*PAIRFORGE, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=400,
                                 env={**os.environ, "PAIRFORGE_RAY_TMPDIR": ray_parent})
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert resumed.stdout.startswith("resumed: 144 pairs in 12 shards from 12 inputs (0 skipped)"), resumed.stdout
        assert resumed.stdout.strip().splitlines()[-1] == str(ds) and (ds / "manifest.json").is_file()
        assert orphan.poll() is not None, "the stale session's process was not stopped"
        assert not stale.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()


def test_a_killed_driver_leaves_no_ray_process_or_folder(photo_dir, tmp_path, ray_parent):
    out = tmp_path / "out"
    proc = start(["--source", str(photo_dir), "--out", str(out), *LONG], ray_parent)
    wait_for_first_commit(proc, out)
    (folder,) = os.listdir(ray_parent)
    before = session_pids(ray_parent)
    assert len(before) >= 3  # GCS, raylet, agents, workers (and the watchdog)
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as an OOM kill would
    proc.wait(30)
    try:
        left, folders = wait_until_clean(ray_parent, CLEANUP_BOUND_S)
        assert not left, [(pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:80]) for pid in left]
        assert not folders, f"{folder} was left behind"
    finally:
        kill_all(set(before))


def test_a_failed_shard_is_one_line_no_traceback_and_no_url_on_stdout(s3_server, photo_dir, ray_parent):
    """The shard's upload is refused (503 SlowDown) until its retries run out; the others commit."""
    out = f"{s3_server.make_bucket()}/pairs"
    from pairforge.pipeline.storage import ENV_VARS

    quick = {ENV_VARS[k]: v for k, v in {"connect_timeout": "2", "read_timeout": "5", "attempts": "3",
                                         "deadline_s": "20", "backoff_base_s": "0.05", "backoff_max_s": "0.2"}.items()}
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.slow_down(r"/shard-000001\.tar(\?|$)")
        proc = start(["--source", str(photo_dir), "--out", out, "--patch-size", "64", "--patches-per-image", "2",
                      "--images-per-shard", "4", "--workers", "2", "--no-progress", "--device", "cpu"], ray_parent,
                     AWS_ENDPOINT_URL=proxy.url, AWS_ENDPOINT_URL_S3=proxy.url, **quick)
        stdout, stderr = proc.communicate(timeout=400)

    assert proc.returncode == 1, stderr[-3000:]
    assert out not in stdout and "s3://" not in stdout, stdout  # no dataset URL for a failed job
    assert "Traceback" not in stderr and "_ShardActor" not in stderr, stderr[-3000:]
    about_shard = [ln for ln in stderr.splitlines() if "shard-000001.tar" in ln]
    assert len(about_shard) == 1 and "SlowDown" in about_shard[0], stderr[-3000:]
    assert "failed: 1 of 3 shards not committed" in stderr
    dataset = re.search(r"not committed in (s3://\S+);", stderr).group(1)
    bucket, prefix = dataset[len("s3://"):].split("/", 1)
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]]
    assert f"{prefix}/manifest.json" not in keys
    (log_key,) = [k for k in keys if re.search(r"/logs/synth-.*\.log$", k)]
    log = client.get_object(Bucket=bucket, Key=log_key)["Body"].read().decode()
    # the workers' own output (their storage retries) is in the log file, not on the terminal
    assert re.search(r"_ShardActor pid=\d+\) .*shard-000001\.tar", log), log[-3000:]
