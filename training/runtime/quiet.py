"""Start-up chatter from DeepSpeed and torch that asks nothing of the user stays off the terminal.

On a CPU machine a rank used to print three lines before training: DeepSpeed's "Setting
accelerator to CPU. If you have GPU …" (its auto-detection found no GPU — expected here),
torch's "No CUDA runtime is found, using CUDA_HOME=…" (about compiling CUDA extensions, which
a CPU run never does) and DeepSpeed's "… shm_comm_op built successfully" (a one-time JIT build
of its shared-memory collective, no longer made on CPU: see training/loop/engines.py). None needs an
action. They go to the ``pairforge.third_party`` logger at DEBUG instead, which ``-v`` or a
logging config can show.

A rank that stops on damaged data (a shard missing, truncated or not matching its sha256 once
training has started, or a store that stops answering) prints one line naming it, and its
traceback goes to the rank's log file (``<run>/logs/rank<N>.log``): the traceback of a
DataLoader worker's error re-raised in its rank used to put 41 lines on the terminal for one
missing file. Other errors (bugs) keep their traceback on the terminal.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import types
from typing import Iterator

log = logging.getLogger("pairforge.third_party")


def settle_rank_environment(has_cuda: bool) -> None:
    """Call in a rank process before DeepSpeed is imported (the rank's entry point).

    Naming the accelerator DeepSpeed would detect anyway skips its detection warning; a value
    the user set wins. A failure on damaged data then ends the rank with one line
    (:func:`report_data_failures_in_one_line`).
    """
    if not has_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    report_data_failures_in_one_line()


def data_failure(exc: BaseException) -> str | None:
    """The one line that describes a failure caused by the data or its store, or None for any
    other error. A DataLoader worker's error arrives re-raised with the worker's whole traceback
    as its message: the line is the original exception's own message, its last line."""
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import StorageError

    if not isinstance(exc, (ShardIntegrityError, StorageError)):
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    head, sep, rest = last.partition(": ")
    if sep and "." in head and " " not in head:  # "pairforge.pipeline....ShardIntegrityError: damaged shard ..."
        last = rest
    return last


def _to_log_files(kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> list[str]:
    """Write the traceback to this process's log files only (never the terminal); their paths."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return []
    record = logging.getLogger("pairforge.training").makeRecord(
        "pairforge.training", logging.ERROR, __file__, 0, "rank %s stopped", (os.environ.get("RANK", "?"),),
        (kind, exc, tb))
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]


def report_data_failures_in_one_line() -> None:
    """Install, at a rank's start-up, an exception hook that puts an uncaught data failure on the
    terminal as one line (its traceback into the rank log), and a KeyboardInterrupt nowhere but
    the log (the launcher reports the interrupt for the whole run). With ``-v`` the traceback
    shows on the terminal as well."""
    from pairforge.logs import is_verbose

    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
        logs = _to_log_files(kind, exc, tb)
        line = None if issubclass(kind, KeyboardInterrupt) else data_failure(exc)
        if is_verbose() or (line is None and not issubclass(kind, KeyboardInterrupt)):
            previous(kind, exc, tb)
        if line is not None:
            where = f" (traceback in {logs[0]})" if logs else ""
            sys.stderr.write(f"pairforge train: rank {os.environ.get('RANK', '0')} stopped: {line}{where}\n")
            sys.stderr.flush()

    sys.excepthook = hook


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
