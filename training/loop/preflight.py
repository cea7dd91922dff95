"""Checks of a training dataset against the config, made before any rank starts.

A mismatch found here costs a second and one clear line; found inside the ranks it costs a
DeepSpeed start-up and a traceback per rank, or (patches smaller than the crop) nothing at all:
the run would silently train on smaller images than the recipe asks for.

With ``shards=True`` every shard the manifest lists is also asked of the store (one HEAD or
stat per shard, a few milliseconds each): a deleted or truncated shard used to be found by
the rank that first read it, minutes into the run and after validation had started.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from pairforge.errors import UsageError
from pairforge.pipeline import storage
from pairforge.pipeline.shards import load_manifest, unconfirmed_shards
from pairforge.training.config import TrainConfig

#: problems named in full in the one-line refusal; the rest are counted
SHOWN_PROBLEMS = 3


class DatasetMismatch(UsageError, ValueError):
    """The dataset cannot feed this config; the message names both sides and the flag that fixes it."""


class ShardsUnusable(DatasetMismatch):
    """Shards the manifest lists are missing from the store or are not the size it records."""


def check_dataset(cfg: TrainConfig, data: str, *, shards: bool = False) -> dict:
    """The dataset's manifest, once it is known to suit ``cfg``; raises :class:`DatasetMismatch`
    (:class:`ShardsUnusable` with ``shards=True`` when a listed shard is missing or resized).

    A missing or unfinished dataset raises ``FileNotFoundError`` (from :func:`load_manifest`); a
    store that cannot be reached, :class:`~pairforge.pipeline.storage.StorageError`.
    """
    manifest = load_manifest(data)
    samples = int(manifest.get("totals", {}).get("samples", 0))
    if samples == 0:
        raise DatasetMismatch(f"{data}: the dataset holds no pairs (its synth job skipped every input; "
                              "see `pairforge inspect`)")
    hr, scale, crop = int(manifest["hr_size"]), int(manifest["scale"]), cfg.data.crop_size
    if crop is not None and crop > hr:
        raise DatasetMismatch(
            f"{data}: the dataset's HR patches are {hr}×{hr} but data.crop_size is {crop}; train with "
            f"--crop-size {hr} (or smaller), or make {crop}×{crop} patches with `pairforge synth --patch-size {crop}`")
    if crop is not None and crop % scale:
        raise DatasetMismatch(f"{data}: data.crop_size={crop} is not a multiple of the dataset's scale ×{scale}; "
                              f"use --crop-size {crop - crop % scale}")
    if shards:
        check_shards(data, manifest)
    return manifest


def check_shards(data: str, manifest: dict) -> None:
    """Every shard of ``manifest`` is in the store with the byte size it records, or
    :class:`ShardsUnusable` naming those that are not (sizes only: the sha256 of every byte is
    checked by the ranks as they read, see training/loop/data.py)."""
    base = storage.normalize(str(data))
    if base.endswith(".json"):  # the manifest's own URL
        base = base.rsplit("/", 1)[0]
    entries = {e["name"]: e for e in manifest.get("shards", [])}
    problems = unconfirmed_shards(base, entries)
    if problems:
        raise ShardsUnusable(shard_problems(base, problems, len(entries)))


def shard_problems(dataset: str, problems: dict[str, str], total: int) -> str:
    """One line: which shards differ from the manifest and what to do about it."""
    shown = [problems[name] for name in sorted(problems)[:SHOWN_PROBLEMS]]
    more = len(problems) - len(shown)
    listed = "; ".join(shown) + (f"; and {more} more" if more else "")
    return (f"{storage.redact(dataset)}: {len(problems)} of {total} shard(s) are not as its manifest records them: "
            f"{listed} (restore them, or make the dataset again with `pairforge synth`)")


# ---------------------------------------------------------------- every check before a rank starts
def preflight(cfg: TrainConfig, data: str, out: str | Path, *, resume: str | None = None, overwrite: bool = False,
              ranks: int | None = None, cluster: bool = False,
              resume_command: Callable[[int], str] | None = None) -> int:
    """Every check that needs no rank, cheapest first; returns the number of local ranks to start.

    ``pairforge train`` (with ``--print-launch`` too) and :func:`pairforge.training.train` run
    exactly this: the dataset against the config with every shard there at its recorded size, the
    run directory (a previous run needs ``resume="auto"`` or ``overwrite``), the checkpoint's rank
    count when resuming, the pretrained folders and the perceptual weights.  Raises a
    :class:`~pairforge.errors.UsageError` subclass naming what to change.  ``cluster``: this
    process is one rank of a launcher that chose the rank count.  ``resume_command(world)`` is the
    command that resumes on ``world`` ranks, quoted in the refusal when a ZeRO checkpoint cannot
    resume on ``ranks``.
    """
    from pairforge.training import check_run_dir

    if overwrite and resume == "auto":
        raise UsageError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
    try:
        check_dataset(cfg, str(data), shards=True)  # every shard there, at its recorded size
        check_run_dir(Path(out), resume, overwrite)
    except OSError as exc:  # a dataset or store out of reach: the address or credentials to check
        if isinstance(exc, UsageError):
            raise
        raise UsageError(str(exc)) from None
    ranks = (ranks or 1) if cluster else resume_ranks(cfg, out, resume, ranks, resume_command)
    check_pretrained(cfg)
    check_perceptual_weights(cfg)
    return ranks


def resume_ranks(cfg: TrainConfig, out: str | Path, resume: str | None, ranks: int | None,
                 resume_command: Callable[[int], str] | None = None) -> int:
    """The local rank count: ``ranks``, or when resuming, the checkpoint's.  A ZeRO checkpoint
    (optimizer state split per rank) asked to resume on another count is refused."""
    from pairforge.training.loop.checkpoint import recorded_world_size

    recorded = recorded_world_size(Path(out) / "checkpoints") if resume == "auto" else None
    if recorded is None:
        return ranks or 1
    world, step = recorded
    if ranks is None:
        if world != 1:
            print(f"pairforge train: resuming the checkpoint at step {step} on its {world} ranks", file=sys.stderr)
        return world
    if ranks != world and cfg.engine.zero_stage >= 1:
        how = resume_command(world) if resume_command else f"ranks={world}"
        raise UsageError(f"the checkpoint in {out} (step {step}) was written by {world} rank(s) and its "
                         f"ZeRO-{cfg.engine.zero_stage} optimizer state is split per rank, so it cannot resume on "
                         f"--ranks {ranks}; resume it with: {how}")
    return ranks


def check_pretrained(cfg: TrainConfig) -> None:
    """The diffusers folders a pretrained generator/discriminator loads (nothing is downloaded at
    train time); :class:`~pairforge.training.model.pretrained_folders.PretrainedMissing` names the field."""
    if cfg.generator.arch != "pretrained" and cfg.discriminator.arch not in ("sd21", "sdxl"):
        return
    from pairforge.training.model.pretrained_folders import require_folder

    if cfg.generator.arch == "pretrained":
        require_folder(cfg.generator.pretrained_path, ["vae", "unet"], cfg.generator.hub_id,
                       "generator.pretrained_path")
    d = cfg.discriminator
    if d.arch in ("sd21", "sdxl"):
        subs = ["unet"] + (["vae"] if d.latent_adapter == "reencode" else [])
        require_folder(d.pretrained_path, subs, d.hub_id, "discriminator.pretrained_path")


def perceptual_kinds(cfg: TrainConfig) -> list[str]:
    """The ImageNet weight files the loss and the validation networks will load."""
    loss = cfg.loss
    if loss.perceptual_backbone != "imagenet":
        return []
    kinds = []
    if loss.dists > 0 or loss.ea_dists > 0 or cfg.log.val_every:
        kinds += ["vgg16", "dists"]
    if loss.lpips > 0:
        kinds += ["alexnet", "lpips_alex"] if loss.lpips_net == "alex" else ["vgg16", "lpips_vgg"]
    if cfg.log.val_every:
        kinds += ["alexnet", "lpips_alex"]
    return list(dict.fromkeys(kinds))


def check_perceptual_weights(cfg: TrainConfig) -> None:
    """The perceptual networks' weights are found where the ranks will look (and are intact)."""
    kinds = perceptual_kinds(cfg)
    if not kinds:
        return
    from pairforge.training.model.perceptual.weights import PerceptualWeightsMissing, resolve_weights

    for kind in kinds:
        try:
            resolve_weights(kind, cfg.loss.weights_dir)
        except PerceptualWeightsMissing as exc:
            raise PerceptualWeightsMissing(f"{exc}\n(--perceptual-backbone random, loss.perceptual_backbone=random, "
                                           "skips them, for smoke tests only)") from None
