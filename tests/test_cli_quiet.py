"""Quiet by default: third-party chatter stays off the terminal and goes to the log file of the
dataset or run; ``-v`` shows it. Through real processes (the routing is process-wide)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]

CHATTY = textwrap.dedent("""
    import logging, sys, warnings
    from pairforge.logs import setup_command_logging, write_log
    setup_command_logging(verbose={verbose})
    logging.getLogger("deepspeed").warning("DS-CHATTER")
    logging.getLogger("pairforge.third_party").debug("CAPTURED-PRINT")
    warnings.warn("LIB-FUTURE", FutureWarning)
    logging.getLogger("pairforge.pipeline").info("OWN-INFO")
    logging.getLogger("pairforge.pipeline").warning("OWN-WARNING")
    print(write_log(sys.argv[1], "synth"))
""")


def _chatty(folder: Path, verbose: bool) -> tuple[subprocess.CompletedProcess, str]:
    env = {k: v for k, v in os.environ.items() if k != "PAIRFORGE_VERBOSE"}
    res = subprocess.run([sys.executable, "-c", CHATTY.format(verbose=verbose), str(folder)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    log = Path(res.stdout.strip().splitlines()[-1])
    assert log.parent == folder / "logs" and log.name.startswith("synth-") and log.suffix == ".log"
    return res, log.read_text()


def test_third_party_records_reach_the_log_file_not_the_terminal(tmp_path):
    res, log = _chatty(tmp_path, verbose=False)
    assert "OWN-WARNING" in res.stderr  # pairforge's own warnings always show
    for quiet in ("DS-CHATTER", "CAPTURED-PRINT", "LIB-FUTURE", "OWN-INFO"):
        assert quiet not in res.stderr
    for kept in ("DS-CHATTER", "CAPTURED-PRINT", "LIB-FUTURE", "OWN-INFO", "OWN-WARNING"):
        assert kept in log


def test_verbose_shows_everything_the_log_holds(tmp_path):
    res, log = _chatty(tmp_path, verbose=True)
    for shown in ("DS-CHATTER", "CAPTURED-PRINT", "LIB-FUTURE", "OWN-INFO", "OWN-WARNING"):
        assert shown in res.stderr and shown in log


def test_every_command_takes_verbose():
    from pairforge.clusters.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser, chosen = build_parser([name, "--help"])
        assert chosen == name
        sub = parser._subparsers._group_actions[0].choices[name]
        assert "--verbose" in sub._option_string_actions and "-v" in sub._option_string_actions, name


@pytest.mark.timeout(300)
def test_embedded_synth_prints_only_its_result(photo_dir, tmp_path):
    """Ray used to warn on every embedded run that it had turned token authentication on."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "PAIRFORGE_VERBOSE")}
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes((Path(photo_dir) / "photo_00.png").read_bytes())
    res = subprocess.run([*PAIRFORGE, "synth", "--source", str(src), "--out", str(tmp_path / "out"), "--patch-size",
                          "64", "--patches-per-image", "1", "--workers", "1", "--no-progress", "--device", "cpu"],
                         capture_output=True, text=True, timeout=280, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Token authentication" not in res.stderr
    assert res.stderr.strip() == "", res.stderr[-3000:]
    assert res.stdout.startswith("created: 1 pairs")
