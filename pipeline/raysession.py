"""An embedded Ray never outlives the process that started it, and leaves no temp folder.

``ray.init()`` of a local cluster starts a GCS server, a raylet, two Python agents (dashboard
and runtime-env, ~100 MB each) and worker processes.  When the driver is killed (``kill -9``,
an OOM kill) nothing stops them at once: measured with Ray 2.60, the two agents kept running
for more than 70 s and the private temp folder (``pfray-*``) stayed forever.  Ray renames its
processes (``ray::DashboardAgent``), so their command lines do not say which cluster they
serve.  Three parts close that gap:

* **A marker.** While ``ray.init`` starts the cluster, ``PAIRFORGE_RAY_SESSION=<temp folder>``
  is in the environment, so every process of that cluster (and every worker its raylet starts
  later) carries it in ``/proc/<pid>/environ``; a process holding a file in the temp folder
  counts as well.  The folder also records its driver (``driver``: pid and start time, so a
  reused pid is not mistaken for it).
* **A watchdog** (this file run as a script, stdlib only, ~10 MB): a child of the driver in its
  own session (a Ctrl-C or ``kill -9`` of the driver's process group does not reach it).  It
  polls its parent every :data:`POLL_S`; once the driver is gone it stops the cluster's
  processes (SIGTERM, then SIGKILL after :data:`GRACE_S`) and removes the folder.  It exits on
  its own when the folder disappears (a clean shutdown).
* **A sweep at the next start**: :func:`reap_stale` removes the sessions under the same parent
  folder whose driver is dead (the watchdog itself may have been killed, or the machine was
  rebooted), with whatever processes are left of them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

#: in the environment of every process of an embedded cluster: its temp folder
SESSION_ENV = "PAIRFORGE_RAY_SESSION"
#: temp folders of embedded clusters are named ``pfray-*`` (see execution.init_ray)
PREFIX = "pfray-"
#: the file in a temp folder naming the driver that started the cluster
DRIVER_FILE = "driver"
POLL_S = 0.5
GRACE_S = 3.0


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (field 22 of its stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[19]) if fields[0] != "Z" else None


def mark_driver(folder: str) -> None:
    """Record this process as the driver of the cluster whose temp folder is ``folder``."""
    with open(os.path.join(folder, DRIVER_FILE), "w") as f:
        f.write(f"{os.getpid()} {start_time(os.getpid()) or 0}\n")


def driver_alive(folder: str) -> bool | None:
    """Whether the driver recorded in ``folder`` still runs; None when none is recorded."""
    try:
        with open(os.path.join(folder, DRIVER_FILE)) as f:
            pid, started = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    now = start_time(pid)
    return now is not None and (started == 0 or now == started)


def _belongs(pid: int, folder: str) -> bool:
    """Whether process ``pid`` was started for the cluster of ``folder`` (its marker, or a file
    it holds inside the folder).  Processes we may not inspect do not belong."""
    marker = f"{SESSION_ENV}={folder}".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if marker in f.read().split(b"\0"):
                return True
        inside = folder.rstrip("/") + "/"
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with_path = os.readlink(f"/proc/{pid}/fd/{fd}")
            if with_path.startswith(inside):
                return True
    except OSError:
        return False
    return False


def session_pids(folder: str) -> list[int]:
    """Live (not zombie) processes of the cluster whose temp folder is ``folder``."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and start_time(int(name)) is not None and _belongs(int(name), folder):
            found.append(int(name))
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap(folder: str, grace_s: float = GRACE_S) -> int:
    """Stop every process of the cluster of ``folder`` and delete the folder; how many were stopped."""
    folder = os.path.abspath(folder)
    pids = session_pids(folder)
    stopped = set(pids)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = session_pids(folder)  # a raylet may have started a worker meanwhile
        stopped.update(pids)
        _signal([p for p in pids if p not in stopped], signal.SIGTERM)
    for _ in range(3):
        if not pids:
            break
        _signal(pids, signal.SIGKILL)
        time.sleep(0.1)
        pids = session_pids(folder)
        stopped.update(pids)
    shutil.rmtree(folder, ignore_errors=True)
    return len(stopped)


def reap_stale(parent: str) -> list[str]:
    """Remove the embedded-cluster temp folders under ``parent`` (ours only) whose driver is
    dead, with their processes; the folders removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(os.path.abspath(parent), name)
        try:
            mine = name.startswith(PREFIX) and os.path.isdir(folder) and os.stat(folder).st_uid == os.getuid()
        except OSError:
            continue
        if mine and driver_alive(folder) is False:
            reap(folder)
            removed.append(folder)
    return removed


def start_watchdog(folder: str) -> subprocess.Popen | None:
    """Start the watchdog of ``folder`` for this process (None where it cannot run: no /proc)."""
    if not os.path.isdir("/proc/self"):
        return None
    env = {k: v for k, v in os.environ.items() if k != SESSION_ENV}
    return subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), folder],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True, start_new_session=True, env=env)


def stop_watchdog(proc: subprocess.Popen | None) -> None:
    """End a watchdog after a clean shutdown (its folder is gone: it has nothing to do)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _watch(driver: int, folder: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's to handle
    while os.path.isdir(folder):
        if os.getppid() != driver:
            reap(folder)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2])
