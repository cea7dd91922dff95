"""The `pairforge` command: one argparse front end, one module per subcommand.

Each subcommand lives in ``clusters/commands/<name>.py`` and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``pairforge --help`` stays
fast and a broken optional dependency of one command does not break the others.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from pairforge.errors import EXIT_FAILED, EXIT_INTERRUPTED, exit_status

#: commands that run the degradation engine on this process's CPU (see setup_process)
_DEGRADING = ("degrade", "synth", "demo")
#: commands that may start Ray (see setup_process)
_RAY = ("synth", "demo")

#: subcommand name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "degrade": ("pairforge.clusters.commands.degrade", "degrade images with a preset and write a contact sheet"),
    "synth": ("pairforge.clusters.commands.synth", "synthesize LR/HR pairs into WebDataset shards"),
    "inspect": ("pairforge.clusters.commands.inspect", "summarize a pairforge dataset (tables, histograms, contact sheet)"),
    "train": ("pairforge.clusters.commands.train", "train a one-step diffusion SR model on pairforge shards"),
    "upscale": ("pairforge.clusters.commands.upscale", "super-resolve images with an exported generator (tiled, any size)"),
    "weights": ("pairforge.clusters.commands.weights", "prepare perceptual-network weights (VGG16/AlexNet) offline"),
    "presets": ("pairforge.clusters.commands.presets", "list degradation and training presets, or print one resolved"),
    "ls": ("pairforge.clusters.commands.ls", "list the datasets under an output root (complete or unfinished)"),
    "export": ("pairforge.clusters.commands.export", "write a dataset's pairs as hr/ and lr/ PNG folders (BasicSR's layout)"),
    "eval": ("pairforge.clusters.commands.eval", "score SR results (PSNR/SSIM-Y, LPIPS, DISTS) beside bicubic and the papers' numbers"),
    "demo": ("pairforge.clusters.commands.demo", "run the end-to-end demo on the bundled sample photos"),
}


def build_parser(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, str | None]:
    """Build the top-level parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="pairforge", description=__doc__.splitlines()[0], epilog=_epilog())
    parser.add_argument("--version", action="version", version=f"pairforge {package_version()}")
    parser.add_argument("-v", "--verbose", dest="verbose_all", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            add_verbose_flag(importlib.import_module(module).add_parser(sub))
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser, chosen if chosen in COMMANDS else None


VERBOSE_HELP = ("also show on stderr what is otherwise only written to the log file: pairforge's INFO lines "
                "and third-party warnings (Ray, DeepSpeed, torch) that ask nothing of you")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """Every command takes ``-v``/``--verbose`` with the same meaning (see pairforge/logs.py)."""
    if "--verbose" not in parser._option_string_actions:
        parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)


def _epilog() -> str:
    """Presets and exit statuses, shown under ``pairforge --help``."""
    from pairforge.clusters.presets_catalog import names_help

    return (f"degradation presets (synth, degrade): {names_help('degradation')}. training presets (train): "
            f"{names_help('training')}. `pairforge presets NAME` prints one resolved; `pairforge COMMAND --help` "
            "explains every flag. Exit status: 0 success; 1 the work failed; 2 bad usage or environment "
            "(found before any work starts); 3 the run directory (train) or dataset (synth) is in use by another "
            "live job; 130 interrupted (Ctrl-C; the line printed says how to continue).")


def package_version() -> str:
    """The installed distribution's version (pyproject's ``version``), without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pairforge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def setup_process(command: str, args: argparse.Namespace | None = None) -> None:
    """Process-wide settings, made here at the entry point and never by library code."""
    if command in _DEGRADING:
        from pairforge.degradations import retain_freed_memory

        retain_freed_memory()  # large batch tensors come from the heap: no page faults per call
    if command in _RAY:
        set_ray_environment(getattr(args, "ray_address", None))


def set_ray_environment(ray_address: str | None) -> None:
    """Ray's public switches, in the environment before ``import ray`` (Ray reads them when it
    is imported; the processes it starts inherit them).  A value the user set wins.

    No usage statistics; and single-node mode, which keeps 127.0.0.1 as the node address, for
    an embedded cluster or one joined at a loopback address.
    """
    from pairforge.pipeline.execution import RAY_CLUSTER_ENV, on_loopback

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray_address:
        # an embedded cluster: token authentication on, said explicitly, so Ray does not warn
        # on every run that it turned it on by default (a user's own RAY_AUTH_MODE wins)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if on_loopback(ray_address):
        os.environ.setdefault(RAY_CLUSTER_ENV, "0")


def main(argv: Sequence[str] | None = None) -> int:
    parser, chosen = build_parser(argv)
    args = parser.parse_args(argv)
    if chosen is None:
        parser.print_help(sys.stderr)  # no command is a usage error: the help is a diagnostic
        return 2
    from pairforge.logs import setup_command_logging

    setup_command_logging(bool(getattr(args, "verbose", False) or args.verbose_all))
    setup_process(chosen, args)
    try:
        return int(importlib.import_module(COMMANDS[chosen][0]).run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit statuses (pairforge/errors.py)
        return report_error(chosen, exc)
    except KeyboardInterrupt:  # a command that prints its own interrupt line returns 130 itself
        return EXIT_INTERRUPTED


def report_error(command: str, exc: Exception) -> int:
    """One line on stderr and the exit status for an error that ended ``command``.

    pairforge's own errors say what to change (2), what failed (1) or who holds the folder (3).
    Anything else is a bug: its traceback goes to a log file, named on the line, and the exit is 1.
    """
    status = exit_status(exc)
    if status is not None:
        print(f"pairforge {command}: error: {exc}", file=sys.stderr)
        return status
    from pairforge.logs import write_crash_log

    where = write_crash_log(command, exc)
    kept = f"; the traceback is in {where}" if where else ""
    print(f"pairforge {command}: internal error: {type(exc).__name__}: {exc}{kept} (please report it)", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
