"""One error family, mapped to exit statuses in one place (pairforge/errors.py, clusters/cli.py).

An error the user must fix exits 2, work that failed exits 1, a folder held by another live job
exits 3; an exception outside the family is a bug: exit 1, one line on stderr, its traceback in a
log file.  Before the family, ``eval`` caught every ValueError as "bad usage" (exit 2), bugs and
damaged shards included, and an unexpected exception printed a bare traceback.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pairforge.clusters.cli import main
from pairforge.errors import EXIT_FAILED, EXIT_IN_USE, EXIT_USAGE, exit_status


def _families() -> dict[type, int]:
    """Every error class a command can meet, with the exit status the user should see."""
    from pairforge.config import ConfigError
    from pairforge.pipeline.job import JobError
    from pairforge.pipeline.shards import ShardIntegrityError, UnsafeMemberError
    from pairforge.pipeline.sources import SourceError
    from pairforge.pipeline.storage import StorageConfigError, StorageError, StorageSetupError
    from pairforge.runlock import Locked
    from pairforge.training import RunDirLocked, RunDirNotEmpty
    from pairforge.training.loop.preflight import DatasetMismatch
    from pairforge.training.model.evaluate import EvalError
    from pairforge.training.model.inference import DeviceUnavailable
    from pairforge.training.model.metrics import ImageTooSmall
    from pairforge.training.model.perceptual.weights import PerceptualWeightsMissing
    from pairforge.training.model.pixels import ExportError, UnreadableImage
    from pairforge.training.model.pretrained_folders import PretrainedMissing
    from pairforge.training.runtime.launch import LaunchError

    usage = (ConfigError, JobError, SourceError, StorageConfigError, StorageSetupError, RunDirNotEmpty, EvalError,
             DeviceUnavailable, LaunchError, ImageTooSmall, PretrainedMissing, PerceptualWeightsMissing,
             ExportError, UnreadableImage, DatasetMismatch)
    failed = (ShardIntegrityError, UnsafeMemberError, StorageError)
    return {**{c: EXIT_USAGE for c in usage}, **{c: EXIT_FAILED for c in failed},
            Locked: EXIT_IN_USE, RunDirLocked: EXIT_IN_USE}


@pytest.mark.parametrize("cls,status", list(_families().items()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_error_class_has_its_exit_status(cls, status):
    assert cls.exit_code == status
    assert exit_status(cls.__new__(cls)) == status


def test_older_bases_are_kept_for_code_that_catches_them():
    from pairforge.config import ConfigError
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import StorageError

    assert issubclass(ConfigError, ValueError) and issubclass(ShardIntegrityError, ValueError)
    assert issubclass(StorageError, OSError)


def test_an_unexpected_exception_is_one_line_and_a_log_file(tmp_path, monkeypatch, capsys):
    """A bug (here injected into `ls`'s dataset reader) exits 1 with one line naming the log file
    that holds its traceback; before, Python printed the traceback and exited 1 unexplained."""
    import pairforge.clusters.commands.ls as ls

    def broken(url: str):
        raise RuntimeError("injected bug")

    (tmp_path / "root" / "ds").mkdir(parents=True)
    monkeypatch.setattr(ls, "describe", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["ls", str(tmp_path / "root")]) == EXIT_FAILED
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("pairforge ls: internal error: RuntimeError: injected bug; the traceback is in ")
    log = Path(line.split("the traceback is in ")[1].split(" (please report it)")[0])
    assert log.parent == tmp_path / "cache" / "pairforge" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "injected bug" in text and "in broken" in text


def test_a_value_error_from_a_bug_in_eval_is_not_bad_usage(tmp_path, weights_dir, monkeypatch, capsys):
    """eval used to answer every ValueError with exit 2 ("bad usage"), a bug's included."""
    import pairforge.training.model.evaluate as ev

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's input")

    import numpy as np
    from PIL import Image

    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(hr / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(lr / "a.png")
    monkeypatch.setattr(ev, "run_evaluation", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc = main(["eval", "--model", "bicubic", "--lr", str(lr), "--hr", str(hr), "--out", str(tmp_path / "out"),
               "--no-fid", "--weights", str(weights_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == EXIT_FAILED, err
    assert "internal error: ValueError: a bug, not the user's input" in err


def test_a_usage_error_is_one_line_with_exit_2(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "nothing*.png"), str(tmp_path / "o"), "--model", "bicubic"]) == EXIT_USAGE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("pairforge upscale: error: ")
