"""One owner per output: a lock file in a local folder, or a lease object in an object store.

Two jobs writing the same output interleave or repeat each other's work: two trainers in one
``--out`` interleave ``metrics.jsonl`` and overwrite each other's checkpoints; two ``synth``
runs into one dataset both make every shard. So ``pairforge train`` holds ``RUN/run.lock``
and ``pairforge synth`` holds ``DATASET/synth.lock`` for the whole job. This module is shared
by both (it sits at the package top, beside config and logs, so that ``pipeline`` need not
import ``training``); ``training/runtime/runlock.py`` re-exports the names train has always used.

Local folders (:func:`acquire`):

* **Liveness on one host** comes from the kernel: the lock is an ``flock`` on the lock file,
  released when the last process holding the file closes it — however it dies, ``kill -9``
  included. A launcher may hand the descriptor to its children (train's ranks), so the lock
  outlives the launcher until its last child has gone.
* **The owner record** (host, pid, start time, command, heartbeat) is JSON inside the same file,
  so a refusal can name who holds the folder. It is cleared on a clean release; the file itself
  is never deleted (deleting a locked file would let two processes lock two inodes).
* **Another host** cannot be checked for liveness, and some shared filesystems do not carry
  ``flock`` between hosts. The owner therefore rewrites its heartbeat every ``HEARTBEAT_S``; a
  record from another host whose heartbeat is younger than ``STALE_AFTER_S`` is treated as live
  even when ``flock`` succeeds here, and an older one as dead (taken over, with a note naming it).

Object stores without locks, e.g. S3 (:func:`acquire_lease`): the lock is a **lease object**
holding the same owner record plus a random ``token`` and the ``stale_after_s`` its readers
use. The holder rewrites it (a new ``heartbeat``) every ``HEARTBEAT_S`` and deletes it on a
clean release. A lease is live while its heartbeat is younger than ``stale_after_s``; it is
taken over when it is older, or at once when its holder ran on this host and its pid is gone.
Taking a lease is write-then-verify: write our record, wait ``LEASE_SETTLE_S``, read it back;
if another starter's record replaced it, that starter won and we refuse. (S3 has strong
read-after-write consistency; two starters lose this race only if one's read-to-write gap
exceeds the settle time.) A holder that cannot heartbeat for ``stale_after_s`` (a partition)
loses its lease to the next starter; it logs that when it sees the other record.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pairforge.errors import InUse

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
#: a lease writer reads its record back after this long to see whether another starter won
LEASE_SETTLE_S = 1.0
_RECORD_MAX_BYTES = 64 * 1024
#: flock errors that mean "this filesystem cannot lock", not "someone holds the lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class Locked(InUse, RuntimeError):
    """Another live pairforge job owns this output (a run directory, a dataset)."""


#: the name ``pairforge train`` has always caught
RunDirLocked = Locked


@dataclass(frozen=True)
class Owner:
    """Who holds an output, as written into its lock file or lease object."""

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


def _refusal(where: str, lock_file: str, owner: Owner | None, stale_after_s: float, what: str) -> str:
    """The message for an output that is in use: who owns it and what the user can do."""
    head = f"{what} {where} is in use"
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
                "its lock is released as soon as it and the processes it started exit.")
    return (f"{head}: its owner {owner.describe()} is no longer running, but processes it started "
            f"(a training's ranks or their data loader workers) still hold {lock_file}. They exit on "
            "their own within seconds of their launcher; retry then, or stop them.")


_COMMAND_MAX_CHARS = 2000  # keeps the record far below what _read_owner reads


def _own_record(command: str, started: float) -> Owner:
    return Owner(host=socket.gethostname(), pid=os.getpid(), started=started,
                 command=command[:_COMMAND_MAX_CHARS], heartbeat=time.time())


def _this_command() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


class RunLock:
    """A held folder lock. ``previous`` names a dead owner this lock took over, if any."""

    def __init__(self, run_dir: Path, fd: int, owner: Owner, previous: Owner | None,
                 heartbeat_s: float, lock_name: str = LOCK_NAME, what: str = "run directory"):
        self.run_dir = run_dir
        self.path = run_dir / lock_name
        self.what = what
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
        return f"took over {self.what} {self.run_dir} from {self.previous.describe()}, which is no longer running"

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
            heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
            lock_name: str = LOCK_NAME, what: str = "run directory") -> RunLock:
    """Lock the local folder ``run_dir`` for this process or raise :class:`Locked` naming the owner.

    A dead owner on this host (its ``flock`` gone) and an owner on another host whose
    heartbeat is older than ``stale_after_s`` are taken over; ``RunLock.previous`` names them.
    ``what`` names the folder in messages ("run directory", "dataset").
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / lock_name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        locked = _try_flock(fd)
        previous = _read_owner(fd)
        if locked is False or _presumed_alive(previous, locked, stale_after_s):
            raise Locked(_refusal(str(run_dir), str(run_dir / lock_name), previous, stale_after_s, what))
    except BaseException:
        os.close(fd)
        raise
    own = _own_record(command or _this_command(), started=time.time())
    return RunLock(run_dir, fd, own, previous, heartbeat_s, lock_name, what)


def _presumed_alive(owner: Owner | None, locked: bool | None, stale_after_s: float) -> bool:
    """Whether a recorded owner must be assumed alive although ``flock`` did not stop us."""
    if owner is None:
        return False
    if not owner.is_local():
        return owner.heartbeat_age() < stale_after_s  # flock may not reach across hosts
    if locked is None:  # no kernel locks here: fall back to the process table
        return _process_exists(owner.pid)
    return False  # the kernel released its lock: it is dead


# --------------------------------------------------------------------------- leases (object stores)
@dataclass(frozen=True)
class LeaseStore:
    """How a lease reaches its object: ``read`` (its bytes, or None when there is none),
    ``write`` (replace it whole) and ``delete``. Errors propagate to the caller."""

    read: Callable[[], bytes | None]
    write: Callable[[bytes], None]
    delete: Callable[[], None]


def _lease_record(owner: Owner, token: str, stale_after_s: float) -> bytes:
    return (json.dumps({**asdict(owner), "token": token, "stale_after_s": stale_after_s}) + "\n").encode()


def _lease_token(raw: bytes | None) -> str | None:
    try:
        return str(json.loads(raw.decode("utf-8", "replace"))["token"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None


def _lease_stale_after(raw: bytes, default: float) -> float:
    """The expiry its writer declared (a reader with another default still honours it)."""
    try:
        return max(default, float(json.loads(raw.decode("utf-8", "replace"))["stale_after_s"]))
    except (ValueError, KeyError, TypeError):
        return default


def _lease_live(owner: Owner | None, stale_after_s: float) -> bool:
    """Whether a lease record found in the store belongs to a job that may still run."""
    if owner is None:  # unreadable: it cannot name anyone, nor be heartbeat by anyone
        return False
    if owner.heartbeat_age() >= stale_after_s:
        return False
    if owner.is_local() and owner.pid != os.getpid():
        return _process_exists(owner.pid)  # this host: the process table is the truth
    return True


class Lease:
    """A held lease object; ``previous`` names a dead or expired holder it replaced, if any."""

    def __init__(self, store: LeaseStore, where: str, owner: Owner, token: str, previous: Owner | None,
                 heartbeat_s: float, stale_after_s: float, what: str):
        self.store, self.where, self.what = store, where, what
        self.owner, self.token, self.previous = owner, token, previous
        self.stale_after_s = stale_after_s
        self.lost: Owner | None = None   # who took the lease over while we held it
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True,
                                      name="pairforge-lease-heartbeat")
        self._beat.start()

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                raw = self.store.read()
                if _lease_token(raw) not in (self.token, None):
                    self.lost = _parse_owner(raw or b"")
                    log.error("runlock: the lease on %s %s was taken over by %s; this job no longer holds it",
                              self.what, self.where, self.lost.describe() if self.lost else "another job")
                    return
                self.owner = Owner(**{**asdict(self.owner), "heartbeat": time.time()})
                self.store.write(_lease_record(self.owner, self.token, self.stale_after_s))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; expiry is far away
                log.warning("runlock: could not renew the lease on %s %s: %s", self.what, self.where, exc)

    def takeover_note(self) -> str | None:
        if self.previous is None:
            return None
        return (f"took over {self.what} {self.where} from {self.previous.describe()}, whose lease had expired "
                "or whose process is gone")

    def release(self) -> None:
        """Stop renewing and delete the lease object if it is still ours."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            if _lease_token(self.store.read()) == self.token:
                self.store.delete()
        except Exception as exc:  # noqa: BLE001 - it expires on its own after stale_after_s
            log.warning("runlock: could not delete the lease on %s %s (it expires in %.0f s): %s",
                        self.what, self.where, self.stale_after_s, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_lease(store: LeaseStore, where: str, lease_url: str, command: str | None = None, *, what: str = "dataset",
                  heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                  settle_s: float = LEASE_SETTLE_S) -> Lease:
    """Take the lease object ``lease_url`` of ``where`` (both named in messages) or raise
    :class:`Locked` naming its holder."""
    raw = store.read()
    previous = _parse_owner(raw) if raw else None
    if raw and _lease_live(previous, _lease_stale_after(raw, stale_after_s)):
        raise Locked(_refusal(where, lease_url, previous, stale_after_s, what))
    token = uuid.uuid4().hex
    own = _own_record(command or _this_command(), started=time.time())
    store.write(_lease_record(own, token, stale_after_s))
    time.sleep(settle_s)
    raw = store.read()
    if _lease_token(raw) != token:  # another starter wrote after us: it holds the lease
        holder = _parse_owner(raw) if raw else None
        raise Locked(_refusal(where, lease_url, holder, stale_after_s, what))
    return Lease(store, where, own, token, previous, heartbeat_s, stale_after_s, what)
