"""Run independent per-sample work (JPEG codec calls, noise fields) on a few threads.

Pillow's codec and torch's random kernels release the GIL but are single-threaded, so a
per-sample Python loop leaves all but one core idle. Each task writes only its own
sample's slice and uses only its own generator, so results are the same for any thread
count. The pool is as wide as ``torch.get_num_threads()``: the CPU budget the caller gave
torch (1 inside a one-CPU Ray actor) is the budget used here too.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import torch

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(width: int) -> ThreadPoolExecutor:
    with _lock:
        if width not in _pools:
            _pools[width] = ThreadPoolExecutor(max_workers=width, thread_name_prefix="pairforge-sample")
        return _pools[width]


def for_each_sample(fn: Callable[[int], None], indices: Iterable[int]) -> None:
    """Call ``fn(i)`` for every index, concurrently when torch may use more than one thread."""
    indices = list(indices)
    width = min(torch.get_num_threads(), len(indices))
    if width <= 1 or threading.current_thread().name.startswith("pairforge-sample"):
        for i in indices:
            fn(i)
        return
    for future in [_pool(width).submit(fn, i) for i in indices]:
        future.result()  # re-raises the first failure
