"""One owner per run directory: ``DIR/run.lock``.

Two trainers writing the same ``--out`` interleave ``metrics.jsonl`` and overwrite each
other's checkpoints, so ``pairforge train`` (the launcher, or rank 0 under a cluster launcher)
takes this lock before it writes anything and holds it for the whole run. The launcher hands
the locked descriptor to its ranks, so the lock outlives the launcher until its last rank has
gone.

The lock itself is generic and lives in :mod:`pairforge.runlock` (``pairforge synth`` holds
its dataset with it too); this module keeps the names train has always imported.
"""
from __future__ import annotations

from pairforge.runlock import (
    HEARTBEAT_S,
    LOCK_NAME,
    STALE_AFTER_S,
    Locked,
    Owner,
    RunDirLocked,
    RunLock,
    _parse_owner,
    _presumed_alive,
    _process_exists,
    _read_owner,
    _try_flock,
    acquire,
)

__all__ = ["HEARTBEAT_S", "LOCK_NAME", "STALE_AFTER_S", "Locked", "Owner", "RunDirLocked", "RunLock", "acquire",
           "_parse_owner", "_presumed_alive", "_process_exists", "_read_owner", "_try_flock"]
