"""One owner per run directory: ``DIR/run.lock``.

Two trainers writing the same ``--out`` interleave ``metrics.jsonl`` and overwrite each
other's checkpoints, so ``pairforge train`` (the launcher, or rank 0 under a cluster launcher)
takes this lock before it writes anything and holds it for the whole run.

* **Liveness on one host** comes from the kernel: the lock is an ``flock`` on ``run.lock``,
  released when the last process holding the file closes it — however it dies, ``kill -9``
  included. The launcher hands the descriptor to its ranks, so the lock outlives the launcher
  until its last rank has gone.
* **The owner record** (host, pid, start time, command, heartbeat) is JSON inside the same file,
  so a refusal can name who holds the directory. It is cleared on a clean release; the file
  itself is never deleted (deleting a locked file would let two processes lock two inodes).
* **Another host** cannot be checked for liveness, and some shared filesystems do not carry
  ``flock`` between hosts. The owner therefore rewrites its heartbeat every
  ``HEARTBEAT_S``; a record from another host whose heartbeat is younger than
  ``STALE_AFTER_S`` is treated as live even when ``flock`` succeeds here, and an older one as
  dead (taken over, with a note naming it).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_NAME = "run.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
_RECORD_MAX_BYTES = 64 * 1024
#: flock errors that mean "this filesystem cannot lock", not "someone holds the lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunDirLocked(RuntimeError):
    """Another ``pairforge train`` owns this run directory (and may still be running)."""


@dataclass(frozen=True)
class Owner:
    """Who holds a run directory, as written into its lock file."""

    host: str
    pid: int
    started: float
    command: str
    heartbeat: float

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def heartbeat_age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"pid {self.pid} on host {self.host} (started {started}; command: {self.command})"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_owner(raw: bytes) -> Owner | None:
    try:
        data = json.loads(raw.decode("utf-8", "replace"))
        return Owner(host=str(data["host"]), pid=int(data["pid"]), started=float(data["started"]),
                     command=str(data["command"]), heartbeat=float(data["heartbeat"]))
    except (ValueError, KeyError, TypeError):
        return None


def _read_owner(fd: int, attempts: int = 5) -> Owner | None:
    """The record in the lock file, or None when it is empty (released) or unreadable.

    A read that overlaps the owner's heartbeat rewrite can see a torn record: read again.
    """
    for attempt in range(attempts):
        raw = os.pread(fd, _RECORD_MAX_BYTES, 0).strip()
        if not raw:
            return None
        owner = _parse_owner(raw)
        if owner is not None or attempt == attempts - 1:
            return owner
        time.sleep(0.01)
    return None


def _try_flock(fd: int) -> bool | None:
    """True: locked by us; False: someone holds it; None: this filesystem cannot lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKING:
            return None
        raise


def _refusal(run_dir: Path, owner: Owner | None, stale_after_s: float) -> str:
    """The message for a run directory that is in use: who owns it and what the user can do."""
    lock_file = run_dir / LOCK_NAME
    head = f"run directory {run_dir} is in use"
    if owner is None:
        return (f"{head}: {lock_file} is locked by a process that left no owner record. "
                "Wait for it to finish or stop it; the lock is released when it exits.")
    if not owner.is_local():
        return (f"{head} by {owner.describe()}, last heartbeat {owner.heartbeat_age():.0f} s ago. "
                f"pairforge cannot check whether a process on another host is alive: if that run has "
                f"died, its lock is taken over once the heartbeat is {stale_after_s:.0f} s old, or "
                f"delete {lock_file} when you are sure it is gone.")
    if _process_exists(owner.pid):
        return (f"{head} by {owner.describe()}. Wait for it to finish or stop it (kill {owner.pid}); "
                "its lock is released as soon as it and its ranks exit.")
    return (f"{head}: its owner {owner.describe()} is no longer running, but processes it started "
            f"(its ranks or their data loader workers) still hold {lock_file}. They exit on their own "
            "within seconds of their launcher; retry then, or stop them.")


_COMMAND_MAX_CHARS = 2000  # keeps the record far below what _read_owner reads


def _own_record(command: str, started: float) -> Owner:
    return Owner(host=socket.gethostname(), pid=os.getpid(), started=started,
                 command=command[:_COMMAND_MAX_CHARS], heartbeat=time.time())


class RunLock:
    """A held run-directory lock. ``previous`` names a dead owner this lock took over, if any."""

    def __init__(self, run_dir: Path, fd: int, owner: Owner, previous: Owner | None,
                 heartbeat_s: float):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.owner = owner
        self.previous = previous
        self._fd = fd
        self._written = os.fstat(fd).st_size  # a dead owner's record is overwritten in full
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._write(owner)
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True,
                                      name="pairforge-runlock-heartbeat")
        self._beat.start()

    def fileno(self) -> int:
        """The locked descriptor: processes that inherit it keep the directory locked."""
        return self._fd

    def _write(self, owner: Owner) -> None:
        """Rewrite the record in place; padding to the old length leaves no stale tail to read."""
        data = (json.dumps(asdict(owner)) + "\n").encode()
        padded = data.ljust(max(self._written, len(data)))
        with self._io:
            if self._fd < 0:
                return
            os.pwrite(self._fd, padded, 0)
            self._written = len(padded)

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.owner = Owner(**{**asdict(self.owner), "heartbeat": time.time()})
            self._write(self.owner)

    def takeover_note(self) -> str | None:
        if self.previous is None:
            return None
        return f"took over run directory {self.run_dir} from {self.previous.describe()}, which is no longer running"

    def release(self) -> None:
        """Clear the record and unlock (also for processes that inherited the descriptor)."""
        self._stop.set()
        with self._io:
            if self._fd < 0:
                return
            os.ftruncate(self._fd, 0)
            with contextlib.suppress(OSError):  # a filesystem without locks: nothing to unlock
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: str | os.PathLike, command: str | None = None, *,
            heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> RunLock:
    """Lock ``run_dir`` for this process or raise :class:`RunDirLocked` naming the owner.

    A dead owner on this host (its ``flock`` gone) and an owner on another host whose
    heartbeat is older than ``stale_after_s`` are taken over; ``RunLock.previous`` names them.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        locked = _try_flock(fd)
        previous = _read_owner(fd)
        if locked is False or _presumed_alive(previous, locked, stale_after_s):
            raise RunDirLocked(_refusal(run_dir, previous, stale_after_s))
    except BaseException:
        os.close(fd)
        raise
    own = _own_record(command or " ".join(shlex.quote(a) for a in sys.argv), started=time.time())
    return RunLock(run_dir, fd, own, previous, heartbeat_s)


def _presumed_alive(owner: Owner | None, locked: bool | None, stale_after_s: float) -> bool:
    """Whether a recorded owner must be assumed alive although ``flock`` did not stop us."""
    if owner is None:
        return False
    if not owner.is_local():
        return owner.heartbeat_age() < stale_after_s  # flock may not reach across hosts
    if locked is None:  # no kernel locks here: fall back to the process table
        return _process_exists(owner.pid)
    return False  # the kernel released its lock: it is dead
