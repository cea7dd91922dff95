"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

glibc serves every allocation above a threshold (128 KiB, adapting up to 32 MiB) with a
fresh ``mmap`` and unmaps it on free. The chain allocates dozens of full-batch float
tensors per call (16 × 3 × 768² floats is 113 MB), so each one is a fresh mapping whose
pages the kernel must fault in and zero on first touch, on every call. Keeping freed
blocks in the heap removes those faults (the effect is in ``bench/degradations.py``).
PyTorch's CPU tuning guides recommend jemalloc or tcmalloc for the same reason; this gets
the effect with the C library already loaded. Pixels are unaffected; the cost is that the process keeps its peak heap size.

Process-wide, so library code never calls it: pairforge's entry points do (the CLI's
degrading commands, a pipeline worker's start-up). Set ``PAIRFORGE_KEEP_MALLOC=1`` to leave
the allocator as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


@functools.lru_cache(maxsize=None)
def retain_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it; True when the policy is active.

    Process-wide and applied once (the settings are idempotent anyway); a no-op (False)
    outside Linux/glibc or when disabled.
    """
    if os.environ.get("PAIRFORGE_KEEP_MALLOC") == "1" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok_mmap = libc.mallopt(_M_MMAP_MAX, 0)  # 0: large blocks come from the heap, not mmap
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 40)  # never give the heap top back
        ok_pad = libc.mallopt(_M_TOP_PAD, 64 << 20)  # grow the heap in 64 MiB steps
    except (OSError, AttributeError):
        return False
    return bool(ok_mmap and ok_trim and ok_pad)
