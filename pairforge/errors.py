"""One error family for every command: an exception's class says whose move it is.

* :class:`UsageError` — the user must change something: an argument, a config field, a path
  that is not there, credentials, a device this machine lacks.  Exit 2, found before any work
  starts wherever it can be.
* :class:`WorkFailed` — the work started and failed: a shard damaged while it was read, objects
  the store would not take, a rank that died.  Exit 1.
* :class:`InUse` — another live pairforge process holds the dataset or run folder.  Exit 3.

Library code raises these (its own errors subclass them, and keep their older built-in bases,
``ValueError`` or ``OSError``, for code that already catches those); the CLI turns them into an
exit status and one line in one place, :func:`exit_status` (``clusters/cli.py``).  Ctrl-C is
130.  Anything else is a bug: exit 1, one line on stderr, the traceback in a log file.
"""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_IN_USE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class PairforgeError(Exception):
    """Base of the family; :attr:`exit_code` is the command's exit status when it ends one."""

    exit_code = EXIT_FAILED


class UsageError(PairforgeError):
    """The user must change something before the command can work (exit 2)."""

    exit_code = EXIT_USAGE


class WorkFailed(PairforgeError):
    """The work started and failed; what was kept is said in the message (exit 1)."""

    exit_code = EXIT_FAILED


class InUse(PairforgeError):
    """Another live pairforge process holds what this command would write (exit 3)."""

    exit_code = EXIT_IN_USE


def exit_status(exc: BaseException) -> int | None:
    """The exit status for ``exc``: its family's, 130 for Ctrl-C, None for an unexpected one (a bug)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, PairforgeError):
        return exc.exit_code
    return None
