"""Start-up chatter from DeepSpeed and torch that asks nothing of the user stays off the terminal.

On a CPU machine a rank used to print three lines before training: DeepSpeed's "Setting
accelerator to CPU. If you have GPU …" (its auto-detection found no GPU — expected here),
torch's "No CUDA runtime is found, using CUDA_HOME=…" (about compiling CUDA extensions, which
a CPU run never does) and DeepSpeed's "… shm_comm_op built successfully" (a one-time JIT build
of its shared-memory collective). None needs an action. They go to the ``pairforge.third_party``
logger at DEBUG instead, which ``-v`` or a logging config can show.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Iterator

log = logging.getLogger("pairforge.third_party")


def settle_rank_environment(has_cuda: bool) -> None:
    """Call in a rank process before DeepSpeed is imported (the rank's entry point).

    Naming the accelerator DeepSpeed would detect anyway skips its detection warning; a value
    the user set wins.
    """
    if not has_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@contextlib.contextmanager
def prints_to_log(what: str) -> Iterator[None]:
    """Python-level prints inside the block (DeepSpeed's op-build notices) go to the log."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            log.debug("%s: %s", what, text)
