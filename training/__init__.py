"""pairforge training: a D3SR-style one-step diffusion SR trainer on DeepSpeed.

Python API::

    from pairforge.training import train, load_config
    result = train("tiny", data="out/<dataset-id>", out="runs/tiny", steps=200, ranks=1)
    # -> {"rc": 0, "out": ..., "report": "runs/tiny/report.md", ...}

Three rooms (docs/architecture.md draws them):

* ``loop/`` — one rank's training: ``trainer`` (the explicit loop), ``engines`` (two DeepSpeed
  engines), ``data`` (shard streaming), ``losses``, ``checkpoint``, ``validation``,
  ``logging_utils``, ``report``, ``preflight`` (every check before a rank starts).
* ``runtime/`` — starting and watching ranks: ``launch`` (local ranks that die with their
  launcher, cluster command lines, peer watch), ``rank`` (``bootstrap_rank``, every launcher's
  rank start-up), ``runlock`` (one owner per run directory), ``quiet`` (third-party output to
  the rank log).
* ``model/`` — a trained model in use: ``networks/`` (generator, discriminator, backbones),
  ``inference`` (export loading, tiled upscale), ``evaluate`` and ``metrics``, ``colorfix``,
  ``pixels`` (the one image reader and pixel conventions), ``perceptual/`` (LPIPS, DISTS),
  ``published`` (the papers' tables). It imports nothing from the other two rooms.

``config`` (typed YAML + ``presets/``) is the recipe all three read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pairforge.errors import UsageError
from pairforge.training.config import ConfigError, TrainConfig, available_presets, from_dict, load_config, set_dotted
from pairforge.training.runtime.runlock import RunDirLocked
from pairforge.training.runtime.runlock import acquire as acquire_run_dir

__all__ = ["train", "load_config", "TrainConfig", "ConfigError", "RunDirLocked", "RunDirNotEmpty", "available_presets",
           "from_dict", "set_dotted", "previous_run", "check_run_dir", "clear_run_dir", "run_checked"]

#: what a run writes into its directory; ``overwrite=True`` deletes these and nothing else
RUN_FILES = ("job.json", "config.yaml", "run.json", "metrics.jsonl", "validation.jsonl", "loss_curves.png",
             "image_grid.png", "report.md", "report.html")
RUN_DIRS = ("checkpoints", "export", "samples", "tensorboard")


class RunDirNotEmpty(UsageError, FileExistsError):
    """The run directory holds another run's progress and neither resume nor overwrite was asked for."""


def previous_run(out: str | os.PathLike) -> str | None:
    """What a fresh start in ``out`` would destroy (a checkpoint, logged steps), or None.

    A run that failed before its first logged step or checkpoint leaves nothing here, so it
    never blocks the next one.
    """
    from pairforge.training.loop.checkpoint import latest

    outp = Path(out)
    found = []
    try:
        ckpt = latest(outp / "checkpoints") if (outp / "checkpoints").is_dir() else None
    except ValueError:  # a torn latest.json still marks a run that wrote checkpoints
        ckpt = {"step": "?"}
    if ckpt is not None:
        found.append(f"a checkpoint at step {ckpt.get('step')}")
    metrics = outp / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(f"{sum(1 for line in metrics.read_text().splitlines() if line.strip())} logged step(s)")
    return " and ".join(found) or None


def check_run_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start afresh over a previous run unless asked to (RunDirNotEmpty)."""
    if overwrite and resume not in (None, "", "none"):
        raise ValueError("resume='auto' continues the run in the directory and overwrite=True deletes it: "
                         "pass one of them")
    if overwrite or resume not in (None, "", "none"):
        return
    found = previous_run(out)
    if found:
        raise RunDirNotEmpty(f"{out} holds a previous run ({found}); continue it with --resume auto, or delete "
                             "it and start afresh with --overwrite")


def clear_run_dir(out: Path) -> None:
    """Delete a previous run's files (only those a run writes; the lock file stays)."""
    import shutil

    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def train(config: str | os.PathLike | TrainConfig, data: str, out: str | os.PathLike, *,
          steps: int | None = None, ranks: int = 1, zero_stage: int | None = None,
          resume: str | None = None, overrides: dict[str, Any] | None = None,
          val_data: str | None = None, extra_env: dict[str, str] | None = None, overwrite: bool = False) -> dict:
    """Train on ``ranks`` local processes (gloo on CPU, nccl on GPU) and wait.

    ``config``: a preset name (``tiny``, ``d3sr-sd21``, ``d3sr-sdxl``), a YAML path or a
    TrainConfig. ``overrides`` is a nested dict or {"dotted.key": value}. Returns
    {"rc", "out", "report", "metrics", "export"}; rc != 0 if a rank failed.

    Before anything starts, the checks of ``pairforge train`` run (:func:`training.loop.preflight.preflight`):
    the dataset must suit the config and every shard its manifest lists must be in the store at
    its recorded size, else ``DatasetMismatch`` (``ShardsUnusable`` for shards, naming them); the
    pretrained folders and perceptual weights the config needs must be there
    (``PretrainedMissing``, ``PerceptualWeightsMissing``); a ZeRO checkpoint resumes only on its
    own rank count. Ctrl-C stops the ranks and raises ``KeyboardInterrupt``.

    A directory holding a previous run (a checkpoint or logged steps) is continued with
    ``resume="auto"``, deleted first with ``overwrite=True``, and otherwise refused
    (``RunDirNotEmpty``) before anything starts.

    ``out`` is locked for the whole run (``out/run.lock``, see training/runtime/runlock.py): raises
    ``RunDirLocked`` naming the owner while another train on it is alive; a dead owner's lock is
    taken over. The ranks die with this process, whatever kills it.
    """
    from pairforge.training.loop.preflight import preflight

    ov: dict = {}
    for k, v in (overrides or {}).items():
        if "." in k:
            set_dotted(ov, k, v)
        else:
            ov[k] = v
    if steps is not None:
        ov["steps"] = steps
    if zero_stage is not None:
        set_dotted(ov, "engine.zero_stage", zero_stage)
    if isinstance(config, TrainConfig):
        cfg = from_dict(config.to_dict(), ov)
    else:
        cfg = load_config(config, overrides=ov)
    # the checks `pairforge train` makes, before a rank starts or anything is written
    ranks = preflight(cfg, str(data), out, resume=resume, overwrite=overwrite, ranks=ranks)
    return run_checked(cfg, data, out, ranks=ranks, resume=resume, overwrite=overwrite, val_data=val_data,
                       extra_env=extra_env)


def run_checked(cfg: TrainConfig, data: str, out: str | os.PathLike, *, ranks: int, resume: str | None = None,
                overwrite: bool = False, val_data: str | None = None,
                extra_env: dict[str, str] | None = None) -> dict:
    """The part of :func:`train` after its checks: lock ``out``, write ``job.json``, run ``ranks``
    local ranks and wait.  For callers that ran :func:`training.loop.preflight.preflight` on these
    arguments themselves (``pairforge train``), so the checks are not made twice."""
    from pairforge.training.runtime.launch import spawn_local

    outp = Path(out)
    with acquire_run_dir(outp) as lock:  # before anything is written into the run directory
        if lock.previous is not None:
            print(f"[pairforge] {lock.takeover_note()}", flush=True)
        if overwrite:
            clear_run_dir(outp)  # under the lock: never a live run's files
        job = {"config": cfg.to_dict(), "data": str(data), "out": str(outp), "resume": resume, "val_data": val_data}
        job_path = outp / "job.json"
        job_path.write_text(json.dumps(job, indent=2))
        rc = spawn_local(job_path, ranks, extra_env=extra_env, loader_workers=cfg.data.num_workers,
                         inherit_fds=(lock.fileno(),))
    return {"rc": rc, "out": str(outp), "report": str(outp / "report.md"),
            "metrics": str(outp / "metrics.jsonl"), "export": str(outp / "export")}
