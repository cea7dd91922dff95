"""Starting the ranks.

**Embedded (default):** ``spawn_local`` starts N local processes of
``python -m pairforge.training.loop.trainer JOB.json`` with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR=127.0.0.1 and a free MASTER_PORT; each joins a gloo (CPU) or nccl (GPU) group.
If one rank dies, the others are terminated (they would otherwise block in a collective).

**Ranks die with their launcher**, however it dies (``kill -9`` included), so an orphaned run can
never train beside a later ``--resume``: on Linux each rank is armed with a parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set between fork and exec), and every rank also runs
``watch_launcher``, a thread that exits the process when its parent changes (the portable
fallback). DataLoader workers follow their rank: torch's worker loop exits once its parent pid
changes (``ManagerWatchdog``, checked at least every 5 s); a forkserver's workers see the same
when the forkserver exits with its rank.

**Ctrl-C stops the run once, quietly.** A terminal sends SIGINT to the launcher and every
rank (one process group). A rank that ``spawn_local`` started leaves at once, printing nothing
(:func:`exit_quietly_on_interrupt`; its peer watch does the same while the main thread sits in
C++ code); the launcher stops what is left and raises ``KeyboardInterrupt`` once, which
``pairforge train`` turns into one line naming the checkpoint kept and the ``--resume``
command (exit 130).

**A rank that dies stops the job, and is named.** However the ranks were started (``spawn_local``,
torchrun, the DeepSpeed launcher), every rank runs a :class:`PeerWatch`: a thread that checks
the other ranks on its machine (their pids, exchanged once at start-up) every quarter second
and, when one is gone, prints ``rank R (pid P on host H) died`` and exits
(``PEER_LOST_EXIT_CODE``) instead of waiting for it in the next collective. A rank that its
launcher stops with SIGTERM first names a dead peer the same way, so the launcher's log always
says which rank died (DeepSpeed's own message prints the last rank's command line, whichever
rank failed). Ranks on other machines are left to the launcher and the collective's error.

**Clusters:** the same command runs under the DeepSpeed launcher or torchrun, which set the
rank variables themselves; ``pairforge train`` then runs the trainer in-process.
``deepspeed_command`` / ``torchrun_command`` compose the command lines (also printed by
``pairforge train --print-launch``); see docs/clusters.md and clusters/templates/.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pairforge.errors import UsageError

#: set by spawn_local in each rank's environment: the launcher's pid, which the rank must not outlive
LAUNCHER_PID_ENV = "PAIRFORGE_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ORPHANED_EXIT_CODE = 70
#: exit status of a rank that stopped because another rank on its machine died
PEER_LOST_EXIT_CODE = 71
#: exit status of a rank stopped by SIGTERM (the shell's 128 + 15)
TERMINATED_EXIT_CODE = 128 + int(signal.SIGTERM)
#: exit status of a rank (and of ``pairforge train``) stopped by Ctrl-C (the shell's 128 + 2)
INTERRUPTED_EXIT_CODE = 128 + int(signal.SIGINT)


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
    """A stable cache for the ops DeepSpeed JIT-builds, so only the first run on a machine builds them.

    CPU (gloo) ranks build none since ``engines.skip_shm_comm_op``; GPU runs may. One folder
    per Python environment as its path reads (``sys.prefix``, not resolved): two environments
    (two checkouts, two venvs) sharing one folder make ninja see the other's build as stale
    and rebuild the op (~25-100 s) on every alternation, and so would one environment reached
    through a symlink and through its real path, because the build commands name the op's
    sources by that path."""
    env = {}
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        import hashlib
        import sys

        per_env = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
        env["TORCH_EXTENSIONS_DIR"] = str(Path.home() / ".cache" / "pairforge" / "torch_extensions" / per_env)
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


def _rank_preexec(arm: Callable[[], None] | None) -> Callable[[], None]:
    """The ``preexec_fn`` of a local rank: SIGINT ignored from birth (an ignored signal stays
    ignored across exec, and Python then installs no KeyboardInterrupt handler) until the rank
    installs :func:`exit_quietly_on_interrupt`, so a Ctrl-C during its imports prints no
    traceback either; then the parent-death signal, where there is one."""
    def start() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if arm is not None:
            arm()

    return start


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
    exit_quietly_on_interrupt()
    return thread


def exit_quietly_on_interrupt() -> bool:
    """In a rank started by ``spawn_local`` (main thread): SIGINT ends the process at once with
    :data:`INTERRUPTED_EXIT_CODE`, printing nothing. A terminal's Ctrl-C reaches the launcher
    too, and the launcher says once what was kept and how to resume; a ``KeyboardInterrupt``
    unwinding through DeepSpeed and the DataLoader printed a traceback per rank instead. What an
    interrupted checkpoint save left half-written, ``--resume auto`` names and sets aside, as
    after ``kill -9``. Returns whether the handler was installed (not for other ranks)."""
    if not launched_by_pairforge() or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(INTERRUPTED_EXIT_CODE))
    return True


# --------------------------------------------------------------------------- peers on this machine
@dataclass(frozen=True)
class Peer:
    """One rank as the others see it: enough to tell, from another process, whether it still runs."""

    rank: int
    pid: int
    started: int  # start time in clock ticks after boot (/proc): a reused pid is not mistaken for it
    machine: int  # equal values: same kernel and pid namespace, so ``pid`` can be checked from here


def _proc_stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from the state field on (the command name may hold spaces), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _start_time(pid: int) -> int:
    """The process's start time (field 22 of /proc/<pid>/stat); 0 where /proc is unavailable."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else 0


def machine_id() -> int:
    """A number shared by exactly the processes whose pids this process can check: same boot of
    the same kernel and same pid namespace (containers on one host get different ones)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, namespace = socket.gethostname(), 0
    digest = hashlib.sha256(f"{boot}/{namespace}".encode()).digest()
    return int.from_bytes(digest[:7], "big")  # fits an int64 tensor


def this_rank(rank: int) -> Peer:
    return Peer(rank, os.getpid(), _start_time(os.getpid()), machine_id())


def peer_alive(peer: Peer) -> bool:
    """Whether the peer's process still runs (a zombie, waiting for its launcher to reap it, does not)."""
    if peer.started == 0:  # no /proc: signal 0 only tells whether the pid exists
        try:
            os.kill(peer.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _proc_stat(peer.pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == peer.started


def gather_peers(rank: int, world: int, device) -> list[Peer]:
    """Every rank's :class:`Peer` (a collective: one all-gather of four integers per rank)."""
    import torch
    import torch.distributed as dist

    me = this_rank(rank)
    if world <= 1 or not dist.is_initialized():
        return [me]
    mine = torch.tensor([me.rank, me.pid, me.started, me.machine], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    return [Peer(*(int(v) for v in t.tolist())) for t in everyone]


_fork_hook_installed = False


def _plain_sigterm_in_child() -> None:
    """A forked child (a DataLoader worker) gets SIGTERM's default action back and no wakeup fd:
    it must neither run its rank's handler nor wake its rank's watch thread."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: nothing was inherited there
        pass


class PeerWatch:
    """Stops this rank, naming the dead one, as soon as another rank on this machine is gone.

    Without it a survivor waits for the dead rank in its next collective until the launcher
    notices (torchrun: a fraction of a second; DeepSpeed's launcher: up to a second, and its
    message names the wrong rank; gloo/NCCL timeouts: 30 minutes). SIGTERM, the launchers' way
    of stopping the survivors, is handled in the same thread: the signal's wakeup fd wakes it
    even while the main thread sits in C++ code, and it names a dead peer before exiting.
    :meth:`stop` before the ranks' last barrier: after it a peer may exit normally first.
    Forked children (DataLoader workers) get SIGTERM's default action back in a fork hook; a
    child signalled in the microseconds before that hook runs would wake this thread as if the
    rank itself had been terminated.
    """

    def __init__(self, rank: int, peers: Sequence[Peer], poll_s: float = 0.25, quiet_interrupt: bool | None = None):
        me = next(p for p in peers if p.rank == rank)
        #: SIGINT ends this rank silently (ranks of ``spawn_local``, whose launcher reports Ctrl-C)
        self.quiet_interrupt = launched_by_pairforge() if quiet_interrupt is None else quiet_interrupt
        self.rank = rank
        self.watched = [p for p in peers if p.rank != rank and p.machine == me.machine]
        self.host = socket.gethostname()
        self.poll_s = poll_s
        self._stopped = threading.Event()
        self._exiting = threading.Lock()
        self._wakeup: int | None = None

    def start(self) -> PeerWatch:
        """Handle SIGTERM (from the main thread only) and start the watch thread."""
        self._catch_sigterm()
        threading.Thread(target=self._watch, daemon=True, name="pairforge-peer-watch").start()
        return self

    def stop(self) -> None:
        """Peers may exit from now on (the run is finishing); SIGTERM still ends this rank."""
        self._stopped.set()

    def gone(self) -> list[Peer]:
        return [p for p in self.watched if not peer_alive(p)]

    def _catch_sigterm(self) -> None:
        global _fork_hook_installed
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone else handles it: leave it to them
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        if signal.set_wakeup_fd(write, warn_on_full_buffer=False) != -1:  # in use elsewhere (asyncio)
            signal.set_wakeup_fd(-1)
            os.close(read)
            os.close(write)
        else:
            self._wakeup = read
        signal.signal(signal.SIGTERM, lambda signum, frame: self._terminated())
        if not _fork_hook_installed:
            os.register_at_fork(after_in_child=_plain_sigterm_in_child)
            _fork_hook_installed = True

    def _signals(self, wait_s: float | None = None) -> set[int]:
        """Signal numbers that arrived in the last ``wait_s`` (default ``poll_s``; empty without a
        wakeup fd)."""
        wait_s = self.poll_s if wait_s is None else wait_s
        if self._wakeup is None:
            time.sleep(wait_s)
            return set()
        ready, _, _ = select.select([self._wakeup], [], [], wait_s)
        if not ready:
            return set()
        try:
            return set(os.read(self._wakeup, 512))
        except BlockingIOError:
            return set()

    def _watch(self) -> None:
        while True:
            self._handle(self._signals())
            if not self._stopped.is_set():
                gone = self.gone()
                if gone:
                    # a peer that left on Ctrl-C is no news: the same SIGINT is waiting here
                    self._handle(self._signals(wait_s=0.0))
                    self._exit(PEER_LOST_EXIT_CODE, self.lost_message(gone, "stops too rather than wait "
                                                                               "for it in a collective"))

    def _handle(self, signals: set[int]) -> None:
        if int(signal.SIGINT) in signals and self.quiet_interrupt:
            self._exit(INTERRUPTED_EXIT_CODE, None)
        if int(signal.SIGTERM) in signals:
            self._terminated()

    def lost_message(self, gone: Sequence[Peer], then: str) -> str:
        dead = ", ".join(f"rank {p.rank} (pid {p.pid} on host {self.host})" for p in gone)
        return f"[pairforge] {dead} died; rank {self.rank} {then}"

    def _terminated(self) -> None:
        gone = [] if self._stopped.is_set() else self.gone()
        self._exit(TERMINATED_EXIT_CODE, self.lost_message(gone, "stops (SIGTERM from its launcher)")
                   if gone else None)

    def _exit(self, code: int, message: str | None) -> None:
        """Leave now, without clean-up (the default action of SIGTERM); one caller wins."""
        if not self._exiting.acquire(blocking=False):
            time.sleep(3600)  # the other caller is ending the process
            return
        if message:
            os.write(2, (message + "\n").encode())  # no locks: safe from a signal handler
        os._exit(code)


def watch_peers(rank: int, world: int, device, poll_s: float = 0.25) -> PeerWatch | None:
    """Exchange pids with every rank (collective) and watch this machine's other ranks."""
    if world <= 1:
        return None
    return PeerWatch(rank, gather_peers(rank, world, device), poll_s).start()


# --------------------------------------------------------------------------- local ranks
def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == PEER_LOST_EXIT_CODE:
        return "stopped because another rank died"
    return f"exited with status {code}"


def first_failure(codes: Sequence[int | None]) -> tuple[int, int] | None:
    """``(rank, exit code)`` of the rank that failed first, or None: a rank that stopped because
    a peer died, or was terminated, is only the cause when no other rank failed."""
    failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
    consequences = (PEER_LOST_EXIT_CODE, TERMINATED_EXIT_CODE, -int(signal.SIGTERM))
    causes = [f for f in failed if f[1] not in consequences]
    return (causes or failed or [None])[0]


def spawn_local(job_path: str | os.PathLike, nprocs: int, extra_env: dict | None = None,
                poll_s: float = 0.2, loader_workers: int = 0, inherit_fds: tuple[int, ...] = ()) -> int:
    """Run the trainer on ``nprocs`` local ranks; returns 0 or the first failing exit code.

    The ranks die with this process (see the module docstring). ``inherit_fds`` are handed to
    every rank: the run lock's descriptor, so the run directory stays locked until the last
    rank has exited, even when this launcher is killed first.

    Ctrl-C (SIGINT here, or a rank that left on it first) stops every rank and then raises
    ``KeyboardInterrupt`` here, once: the caller says what was kept. A second Ctrl-C while the
    ranks are being stopped is ignored.
    """
    port = free_port()
    try:
        import torch
        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    threads = cpu_threads_per_rank(nprocs, loader_workers) if gpus == 0 else None
    start_rank = _rank_preexec(_parent_death_signal())
    procs: list[subprocess.Popen] = []
    rc, interrupted = 0, False
    try:
        for r in range(nprocs):
            env = dict(os.environ)
            env.update(default_env())
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{LAUNCHER_PID_ENV: str(os.getpid())})
            if threads is not None:
                env.setdefault("OMP_NUM_THREADS", str(threads))
            env.update(extra_env or {})
            procs.append(subprocess.Popen([sys.executable, "-m", "pairforge.training.loop.trainer", str(job_path)],
                                          env=env, preexec_fn=start_rank, pass_fds=inherit_fds))
        rc, interrupted = _wait_for_ranks(procs, poll_s)
    except KeyboardInterrupt:
        rc, interrupted = INTERRUPTED_EXIT_CODE, True
    with _interrupts_ignored():
        # after Ctrl-C the ranks left running get SIGINT too, not SIGTERM: a rank whose own copy
        # of the terminal's SIGINT had not been handled yet (a busy machine) would otherwise
        # announce its vanished peer, a second line where Ctrl-C promises one
        _stop(procs, first=signal.SIGINT if interrupted else signal.SIGTERM)
    if interrupted:
        raise KeyboardInterrupt
    return rc


def _wait_for_ranks(procs: Sequence[subprocess.Popen], poll_s: float) -> tuple[int, bool]:
    """``(exit code, interrupted)`` once every rank exited 0 or one failed (named on stderr);
    a rank that left on SIGINT means Ctrl-C, which this launcher will see too: no message."""
    while True:
        codes = [p.poll() for p in procs]
        failure = first_failure(codes)
        if failure is not None:
            rank, rc = failure
            if rc in (INTERRUPTED_EXIT_CODE, -int(signal.SIGINT)):
                return rc, True
            others = sum(c is None for c in codes)
            sys.stderr.write(f"[pairforge] rank {rank} (pid {procs[rank].pid}) {_exit_description(rc)}"
                             + (f": stopping the other {others} rank(s)\n" if others else "\n"))
            sys.stderr.flush()
            return rc, False
        if all(c == 0 for c in codes):
            return 0, False
        time.sleep(poll_s)


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 20.0, first: int = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM, or SIGINT after Ctrl-C) to the ranks still running (only the
    processes we started), SIGKILL after ``grace_s``: a rank still starting ignores SIGINT."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(first)
    for p in procs:
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block (main thread only; elsewhere a no-op): a Ctrl-C pressed
    again, or already pending, must not cut the ranks' clean-up short with a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- cluster command lines
class LaunchError(UsageError, ValueError):
    """A cluster command line cannot be composed from these arguments (the message says why)."""


#: host names in a hostfile that mean "this machine": no ssh is needed to start ranks there
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


def read_hostfile(path: str | os.PathLike) -> dict[str, int]:
    """``{host: slots}`` from a DeepSpeed hostfile (``host slots=N`` lines, ``#`` comments).

    DeepSpeed's launcher, given a hostfile that does not exist, warns and trains on this
    machine's GPUs alone; so a missing, empty or malformed file is a :class:`LaunchError` here.
    """
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise LaunchError(f"--hostfile {path}: no such file (one `HOST slots=N` line per node, e.g. "
                          "clusters/templates/hostfile.example)") from None
    except OSError as exc:
        raise LaunchError(f"--hostfile {path}: cannot read it ({exc.strerror})") from None
    hosts: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOSTFILE_LINE.match(line)
        if not match or int(match.group(2)) < 1:
            raise LaunchError(f"--hostfile {path}, line {number}: expected `HOST slots=N` with N >= 1, got {line!r}")
        if match.group(1) in hosts:
            raise LaunchError(f"--hostfile {path}, line {number}: host {match.group(1)} is listed twice")
        hosts[match.group(1)] = int(match.group(2))
    if not hosts:
        raise LaunchError(f"--hostfile {path}: lists no host (one `HOST slots=N` line per node)")
    return hosts


def _train_args(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def deepspeed_command(hostfile: str, train_args: Sequence[str], master_addr: str | None = None,
                      master_port: int = 29500) -> str:
    """``deepspeed --hostfile H --no_local_rank ... --module pairforge.clusters.cli train ...``

    One rank per ``slots=`` entry of the hostfile. Several hosts: DeepSpeed starts the other
    nodes' ranks over passwordless ssh (pdsh) and takes the first host's ``hostname -I`` as the
    rendezvous address unless ``master_addr`` is given; ``--out`` must be on a filesystem every
    node shares. A hostfile that lists only this machine needs no ssh: the command says so
    (``--master_addr 127.0.0.1 --no_ssh_check``). ``--no_local_rank``: the rank reads LOCAL_RANK
    from its environment; DeepSpeed would otherwise put ``--local_rank=N`` before ``train``,
    where the ``pairforge`` parser does not take it.
    """
    hosts = read_hostfile(hostfile)
    parts = ["deepspeed", "--hostfile", str(hostfile), "--no_local_rank", "--master_port", str(master_port)]
    if master_addr:
        parts += ["--master_addr", master_addr]
    elif all(h in LOCAL_HOSTS for h in hosts):
        parts += ["--master_addr", "127.0.0.1", "--no_ssh_check"]
    return " ".join(shlex.quote(p) for p in parts) + " --module pairforge.clusters.cli train " + _train_args(train_args)


def torchrun_command(train_args: Sequence[str], nnodes: int = 1, nproc_per_node: int | str = "gpu",
                     master_addr: str | None = None, master_port: int = 29500, job_id: str = "pairforge") -> str:
    """``torchrun ... -m pairforge.clusters.cli train ...``: run the same line on every node.

    One node and no address: ``--standalone`` (a rendezvous on this machine, on a free port).
    Several nodes need the address of the node that hosts the rendezvous, spelled out: a
    ``$MASTER_ADDR`` in a printed command would be expanded by whichever shell runs it, or not
    at all. ``nproc_per_node`` is a number or torchrun's ``gpu`` (every GPU of the node).
    """
    if nnodes < 1:
        raise LaunchError(f"--nnodes {nnodes}: expected at least 1")
    if isinstance(nproc_per_node, int) and nproc_per_node < 1:
        raise LaunchError(f"--ranks {nproc_per_node}: expected at least 1 rank per node")
    head = ["torchrun", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node)]
    if master_addr is None:
        if nnodes > 1:
            raise LaunchError(f"--nnodes {nnodes} needs --master-addr HOST: the address of the node that "
                              "hosts the rendezvous (e.g. the first node), reachable from every node")
        head.insert(1, "--standalone")
    else:
        head += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master_addr}:{master_port}", "--rdzv-id", job_id]
    return " ".join(shlex.quote(p) for p in head) + " -m pairforge.clusters.cli train " + _train_args(train_args)


def cluster_rank_threads(loader_workers: int) -> None:
    """A CPU rank started by torchrun or DeepSpeed gets the intra-op thread count ``spawn_local``
    would give it (unless OMP_NUM_THREADS is set): left alone, every rank of a node starts one
    thread per core and their OpenMP spin-waits slow the first step by tens of seconds."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")  # torchrun / DeepSpeed
    if local and local.isdigit() and int(local) > 0:
        os.environ["OMP_NUM_THREADS"] = str(cpu_threads_per_rank(int(local), loader_workers))
