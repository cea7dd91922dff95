"""Starting the ranks.

**Embedded (default):** ``spawn_local`` starts N local processes of
``python -m pairforge.training.trainer JOB.json`` with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR=127.0.0.1 and a free MASTER_PORT; each joins a gloo (CPU) or nccl (GPU) group.
If one rank dies, the others are terminated (they would otherwise block in a collective).

**Ranks die with their launcher**, however it dies (``kill -9`` included), so an orphaned run can
never train beside a later ``--resume``: on Linux each rank is armed with a parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set between fork and exec), and every rank also runs
``watch_launcher``, a thread that exits the process when its parent changes (the portable
fallback). DataLoader workers follow their rank: torch's worker loop exits once its parent pid
changes (``ManagerWatchdog``, checked at least every 5 s); a forkserver's workers see the same
when the forkserver exits with its rank.

**Clusters:** the same command runs under the DeepSpeed launcher or torchrun, which set the
rank variables themselves; ``pairforge train`` then runs the trainer in-process.
``deepspeed_command`` / ``torchrun_command`` compose the command lines (also printed by
``pairforge train --print-launch``); see docs/training.md and clusters/templates/.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

#: set by spawn_local in each rank's environment: the launcher's pid, which the rank must not outlive
LAUNCHER_PID_ENV = "PAIRFORGE_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ORPHANED_EXIT_CODE = 70


#: rendezvous ports come from below Linux's ephemeral range (32768–60999 by default)
_RENDEZVOUS_PORTS = range(20000, 32000)


def free_port(attempts: int = 50) -> int:
    """A free TCP port for the ranks' rendezvous, picked at random below the ephemeral range.

    The port is free when checked and taken a few seconds later by rank 0's store. A port the OS
    hands out for ``bind(0)`` comes from the ephemeral range, where every other process's
    outgoing connections and ``bind(0)`` calls draw too, so another job could take it in that
    gap (seen as EADDRINUSE when two trainings start side by side); a random port outside that
    range is very unlikely to be drawn twice.
    """
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.choice(_RENDEZVOUS_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # everything there taken: ask the OS
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_env() -> dict[str, str]:
    """A stable cache for DeepSpeed's JIT-built CPU ops, so only the first run on a machine builds them."""
    env = {}
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        env["TORCH_EXTENSIONS_DIR"] = str(Path.home() / ".cache" / "pairforge" / "torch_extensions")
    return env


def cpu_threads_per_rank(nprocs: int, loader_workers: int) -> int:
    """Intra-op threads per CPU rank, leaving a core per dataloader worker when possible.

    Oversubscribing (ranks × threads + workers > cores) lets OpenMP spin-waits dominate the
    step time, so a rank gets only the cores its loader workers leave free.
    """
    cpus = os.cpu_count() or 1
    return max(1, (cpus - nprocs * loader_workers) // nprocs)


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when this process dies (Linux).

    The signal is armed in the child before exec, so it covers the rank's whole life, imports
    included. If the launcher died between fork and ``prctl`` the signal would never come, so
    the child checks its parent right after arming and exits if it is already an orphan.
    ``prctl`` is resolved here, in the parent: the child runs as little code as possible
    between fork and exec. None where the call is unavailable (the watchdog still applies).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    launcher = os.getpid()
    kill = ctypes.c_ulong(int(signal.SIGKILL))
    zero = ctypes.c_ulong(0)

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, kill, zero, zero, zero)
        if os.getppid() != launcher:
            os._exit(_ORPHANED_EXIT_CODE)

    return arm


def launched_by_pairforge() -> bool:
    """True in a rank that ``spawn_local`` started (its launcher then holds the run lock)."""
    return os.environ.get(LAUNCHER_PID_ENV) == str(os.getppid())


def watch_launcher(poll_s: float = 1.0) -> threading.Thread | None:
    """In a rank started by ``spawn_local``: exit the process as soon as the launcher is gone.

    The portable fallback to the parent-death signal (and the only guard where ``prctl`` does
    not exist): a daemon thread compares ``os.getppid()`` with the launcher's pid. A no-op in
    processes not started by ``spawn_local`` (cluster launchers, ``nohup``-style runs).
    """
    expected = os.environ.get(LAUNCHER_PID_ENV)
    if not expected:
        return None
    launcher = int(expected)

    def orphaned() -> None:
        sys.stderr.write(f"[pairforge] launcher (pid {launcher}) is gone: rank pid {os.getpid()} exits\n")
        sys.stderr.flush()
        os._exit(_ORPHANED_EXIT_CODE)

    if os.getppid() != launcher:  # it died before this rank got here
        orphaned()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        orphaned()

    thread = threading.Thread(target=watch, daemon=True, name="pairforge-launcher-watchdog")
    thread.start()
    return thread


def spawn_local(job_path: str | os.PathLike, nprocs: int, extra_env: dict | None = None,
                poll_s: float = 0.2, loader_workers: int = 0, inherit_fds: tuple[int, ...] = ()) -> int:
    """Run the trainer on ``nprocs`` local ranks; returns 0 or the first failing exit code.

    The ranks die with this process (see the module docstring). ``inherit_fds`` are handed to
    every rank: the run lock's descriptor, so the run directory stays locked until the last
    rank has exited, even when this launcher is killed first.
    """
    port = free_port()
    try:
        import torch
        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    threads = cpu_threads_per_rank(nprocs, loader_workers) if gpus == 0 else None
    die_with_launcher = _parent_death_signal()
    procs: list[subprocess.Popen] = []
    for r in range(nprocs):
        env = dict(os.environ)
        env.update(default_env())
        env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{LAUNCHER_PID_ENV: str(os.getpid())})
        if threads is not None:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        env.update(extra_env or {})
        procs.append(subprocess.Popen([sys.executable, "-m", "pairforge.training.trainer", str(job_path)], env=env,
                                      preexec_fn=die_with_launcher, pass_fds=inherit_fds))
    rc = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                rc = failed[0]
                break
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        rc = 130
    for p in procs:  # only the processes we started
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return rc


def _train_args(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def deepspeed_command(hostfile: str, train_args: list[str], gpus_per_node: int | None = None,
                      master_addr: str | None = None, master_port: int = 29500) -> str:
    """``deepspeed --hostfile H --module pairforge.clusters.cli train ...`` (one process per GPU listed
    in the hostfile's ``slots=``; needs passwordless ssh between nodes and a shared --out)."""
    parts = ["deepspeed", "--hostfile", hostfile, "--master_port", str(master_port)]
    if master_addr:
        parts += ["--master_addr", master_addr]
    if gpus_per_node:
        parts += ["--num_gpus", str(gpus_per_node)]
    return " ".join(parts) + " --module pairforge.clusters.cli train " + _train_args(train_args)


def torchrun_command(train_args: list[str], nnodes: int = 1, nproc_per_node: int = 1,
                     rdzv_endpoint: str = "$MASTER_ADDR:29500", job_id: str = "pairforge") -> str:
    """``torchrun ... -m pairforge.clusters.cli train ...`` (run the same line on every node)."""
    return (f"torchrun --nnodes {nnodes} --nproc-per-node {nproc_per_node} --rdzv-backend c10d "
            f"--rdzv-endpoint {rdzv_endpoint} --rdzv-id {job_id} -m pairforge.clusters.cli train " + _train_args(train_args))
