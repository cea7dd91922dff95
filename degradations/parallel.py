"""Run independent per-sample work on a few threads, each with one torch thread.

On CPU the chain runs one whole sample per task (and, inside a sample or for a single
sample, Pillow's codec calls and the noise draws). Parallelism comes from samples side by
side rather than from spreading each op over the cores: the chain is hundreds of small
ops (per-image convolutions, resizes, gathers) whose OpenMP fork/join costs more than
they gain, and one image stays in one core's cache. It beats intra-op threads
(``bench/degradations.py``), and no torch op in a pool thread starts a second, competing OpenMP team.

Each task writes only its own sample's slice and uses only its own generator, and every
op of the chain gives the same values with one thread or many (tested), so results are
the same for any pool width. The pool is as wide as ``torch.get_num_threads()``: the CPU
budget the caller gave torch (1 inside a one-CPU Ray actor) is the budget used here too.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import torch

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_PREFIX = "pairforge-sample"


def _one_torch_thread() -> None:
    torch.get_num_threads()  # torch initializes a thread's count lazily, from a global default:
    torch.set_num_threads(1)  # initialize first, so that later changes of that default pass by


def _pool(width: int) -> ThreadPoolExecutor:
    with _lock:
        if width not in _pools:
            caller_threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix=_PREFIX, initializer=_one_torch_thread)
            started = threading.Barrier(width)
            list(pool.map(lambda _: started.wait(), range(width)))  # start every worker now
            # torch's setter also changes the default of threads that have not run an op
            # yet (the caller's included): give the caller its own budget back
            torch.set_num_threads(caller_threads)
            _pools[width] = pool
        return _pools[width]


def in_sample_thread() -> bool:
    """True inside a pool task: nested per-sample work then runs inline."""
    return threading.current_thread().name.startswith(_PREFIX)


def for_each_sample(fn: Callable[[int], None], indices: Iterable[int]) -> None:
    """Call ``fn(i)`` for every index, concurrently when torch may use more than one thread."""
    indices = list(indices)
    width = min(torch.get_num_threads(), len(indices))
    if width <= 1 or in_sample_thread():
        for i in indices:
            fn(i)
        return
    for future in [_pool(width).submit(fn, i) for i in indices]:
        future.result()  # re-raises the first failure
