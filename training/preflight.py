"""Checks of a training dataset against the config, made before any rank starts.

A mismatch found here costs a second and one clear line; found inside the ranks it costs a
DeepSpeed start-up and a traceback per rank, or (patches smaller than the crop) nothing at all:
the run would silently train on smaller images than the recipe asks for.
"""
from __future__ import annotations

from pairforge.pipeline.shards import load_manifest

from .config import TrainConfig


class DatasetMismatch(ValueError):
    """The dataset cannot feed this config; the message names both sides and the flag that fixes it."""


def check_dataset(cfg: TrainConfig, data: str) -> dict:
    """The dataset's manifest, once it is known to suit ``cfg``; raises :class:`DatasetMismatch`.

    A missing or unfinished dataset raises ``FileNotFoundError`` (from :func:`load_manifest`).
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
    return manifest
