"""A rank's start-up, the same whoever launched it (``spawn_local``, torchrun, the DeepSpeed launcher)."""
from __future__ import annotations

import os
from pathlib import Path

from pairforge.logs import attach_rank_log
from pairforge.training.runtime.launch import cluster_rank_threads, default_env, watch_launcher
from pairforge.training.runtime.quiet import settle_rank_environment


def bootstrap_rank(out: str | os.PathLike, loader_workers: int) -> int:
    """Everything a rank does before the trainer starts; returns its rank.

    In order: exit with the launcher when ``spawn_local`` started this rank (a no-op under
    cluster launchers, whose ranks their launcher stops); the launcher defaults (DeepSpeed's op
    cache per environment) for variables not set; on CPU the intra-op thread count
    ``spawn_local`` gives its ranks (``OMP_NUM_THREADS`` already set wins); the quiet
    environment, which must come before DeepSpeed is imported; and the rank's log file,
    ``<out>/logs/rank<N>.log``, which takes third-party output from here on.
    """
    import torch

    watch_launcher()
    for key, value in default_env().items():
        os.environ.setdefault(key, value)
    cuda = torch.cuda.is_available()
    if not cuda:
        cluster_rank_threads(loader_workers)
    settle_rank_environment(cuda)
    rank = int(os.environ.get("RANK", "0"))
    attach_rank_log(Path(out), rank)
    return rank
