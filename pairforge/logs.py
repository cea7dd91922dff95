"""Where diagnostics go: pairforge's own on stderr, third-party chatter into the run's log file.

Ray, DeepSpeed and torch log and warn about things that ask nothing of the user (an
accelerator auto-detected, a deprecation inside a library, an op JIT-built). On the terminal
those lines split the progress bar and bury pairforge's own messages, so by default they are
kept off it: every record is held in memory and written, at the end of the command, to a log
file in the folder the command produced (``<dataset>/logs/synth-<time>.log``,
``<run>/logs/rank<N>.log``).  ``-v`` shows them on stderr as well, and pairforge's own INFO
lines with them.

Entry points only (the CLI, a rank's start-up) call :func:`setup_command_logging`; library code
just logs.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import sys
from pathlib import Path

#: set by the CLI for ``-v``; the ranks and workers it starts inherit it
VERBOSE_ENV = "PAIRFORGE_VERBOSE"
#: pairforge's own loggers start with this; ``pairforge.third_party`` carries captured library output
OWN_PREFIX = "pairforge"
THIRD_PARTY = "pairforge.third_party"
#: records kept in memory for the log file (a very chatty run keeps its newest ones)
MAX_BUFFERED = 20_000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_verbose() -> bool:
    """Whether ``-v`` was given to this command or to the command that started this process."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _is_own(record: logging.LogRecord) -> bool:
    return (record.name == OWN_PREFIX or record.name.startswith(OWN_PREFIX + ".")) and not (
        record.name == THIRD_PARTY or record.name.startswith(THIRD_PARTY + "."))


class _TerminalFilter(logging.Filter):
    """pairforge's warnings always; its INFO and everything third-party only with ``-v``."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        return _is_own(record) and record.levelno >= logging.WARNING


class BufferHandler(logging.Handler):
    """Keeps formatted records in memory until the command knows its output folder."""

    def __init__(self, capacity: int = MAX_BUFFERED):
        super().__init__(level=logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.dropped = 0
        self.third_party = 0
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) == self.lines.maxlen:
            self.dropped += 1
        if not _is_own(record):
            self.third_party += 1
        self.lines.append(self.format(record))


_buffer: BufferHandler | None = None
#: the rank log this process streams to, once :func:`attach_rank_log` attached one
_rank_log: list[Path] = []


def setup_command_logging(verbose: bool | None = None) -> BufferHandler:
    """Route every log record and Python warning of this process (call once, at an entry point).

    ``verbose`` None reads :data:`VERBOSE_ENV`; True also sets it for child processes.
    """
    global _buffer
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    verbose = is_verbose() if verbose is None else verbose
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_pairforge", False)]:
        root.removeHandler(handler)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    terminal.addFilter(_TerminalFilter(verbose))
    _buffer = BufferHandler()
    for handler in (terminal, _buffer):
        handler._pairforge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)  # DEBUG is for our captured library output only (PIL alone would flood it)
    logging.getLogger(THIRD_PARTY).setLevel(logging.DEBUG)
    logging.captureWarnings(True)  # warnings.warn(...) from libraries -> the "py.warnings" logger
    return _buffer


def log_file_name(command: str, when: dt.datetime | None = None) -> str:
    """``<command>-<UTC time>.log``: one file per invocation, sortable by time."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return f"{command}-{when.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}.log"


def buffered_text() -> str:
    """Everything logged so far in this process (empty when nothing was)."""
    if _buffer is None or not _buffer.lines:
        return ""
    head = f"[{_buffer.dropped} earlier line(s) dropped]\n" if _buffer.dropped else ""
    return head + "\n".join(_buffer.lines) + "\n"


def third_party_count() -> int:
    """How many third-party records this process kept off the terminal."""
    return 0 if _buffer is None else _buffer.third_party


def write_log(folder_url: str, command: str) -> str | None:
    """Write this process's log to ``<folder_url>/logs/<command>-<time>.log`` (local or s3).

    A log that cannot be written never fails the command: it returns None and says why on stderr.
    """
    text = buffered_text()
    if not text:
        return None
    from pairforge.pipeline import storage

    url = storage.join(storage.join(folder_url, "logs"), log_file_name(command))
    try:
        storage.write_bytes(url, text.encode())
    except Exception as exc:  # noqa: BLE001 - a log is a convenience, never the reason a job fails
        print(f"pairforge: note: could not write the log file {storage.redact(url)}: {exc}", file=sys.stderr)
        return None
    return url


def crash_log_folder() -> Path:
    """Where a command that has no output folder of its own keeps a crash's log:
    ``$XDG_CACHE_HOME/pairforge/logs`` (``~/.cache/pairforge/logs``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pairforge" / "logs"


def write_crash_log(command: str, exc: BaseException) -> str | None:
    """This process's log and ``exc``'s traceback in :func:`crash_log_folder` (in a training rank:
    appended to its rank log); the file's path, or None (said on stderr) when it cannot be written."""
    import traceback

    trace = "".join(traceback.format_exception(exc))
    if _rank_log:  # a training rank: after what it already streamed to <run>/logs/rank<N>.log
        path, mode, text = _rank_log[-1], "a", trace
    else:
        path, mode, text = crash_log_folder() / log_file_name(command), "w", buffered_text() + trace
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, mode, encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        print(f"pairforge: note: could not write the log file {path}: {err}", file=sys.stderr)
        return None
    return str(path)


def attach_rank_log(out: str | os.PathLike, rank: int) -> Path:
    """In a training rank: stream this rank's records to ``<out>/logs/rank<N>.log`` as they come
    (a rank may be killed; what it logged until then stays), and keep third-party ones off the
    terminal unless ``-v``."""
    setup_command_logging(None)
    path = Path(out) / "logs" / f"rank{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._pairforge = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)
    _rank_log.append(path)
    return path
