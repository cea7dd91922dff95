"""Process helpers for the fault tests, read from /proc: who runs, who is whose child, and a
bounded wait for processes to exit (no psutil; the tests inspect real processes only)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def children(table: dict[int, tuple[int, str]], parents: set[int]) -> set[int]:
    return {pid for pid, (ppid, _) in table.items() if ppid in parents}


def descendants(root: int) -> set[int]:
    table, found, frontier = process_table(), set(), {root}
    while frontier:
        frontier = children(table, frontier) - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    return process_table().get(pid, (0, "X"))[1] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def wait_until_gone(pids: set[int], timeout_s: float) -> set[int]:
    """The pids still running after ``timeout_s`` (empty when all exited)."""
    deadline = time.monotonic() + timeout_s
    alive = {p for p in pids if running(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.25)
        alive = {p for p in alive if running(p)}
    return alive


def kill_all(pids: set[int]) -> None:
    """Teardown: SIGKILL the processes a test started that are still running, by pid."""
    for pid in pids:
        if running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
