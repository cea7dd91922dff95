"""What a synth job makes and how it runs, as typed frozen records.

Why two parts: every field under ``dataset`` decides the bytes of the shards and so goes into
the dataset id (change one and the job writes another dataset folder); no field under ``run``
does — it says how the work is spread (executor, workers, device, batch size, retries, resume,
progress bar), and the same dataset comes out of any of them.

Loading and overrides are :mod:`pairforge.config`'s, the same rules as the training and
degradation configs::

    cfg = SynthConfig.from_dict({"dataset": {"seed": 1, "patch": {"size": 128}}, "run": {"executor": "inline"}})
    cfg = cfg.replace(**{"dataset.views": 2, "run.workers": 4})

An error starts with the dotted field path (``dataset.views: expected an integer >= 1, got 0``).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping

from pairforge.config import ConfigError, apply_dotted, from_plain, join_path, to_plain
from pairforge.degradations import DegradationConfig

from .decode import DEFAULT_MAX_PIXELS
from .patching import PatchConfig
from .shards import EncodeConfig

DEFAULT_PRESET = "realesrgan-x4plus"


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that decides the dataset's bytes (besides the source's content)."""

    #: a bundled degradation preset's name, a degradation YAML file, or a DegradationConfig
    degradation: str | DegradationConfig = DEFAULT_PRESET
    seed: int = 0
    #: degraded LR views per HR patch
    views: int = 1
    images_per_shard: int = 64
    #: larger decoded images are skipped (decompression bombs)
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: ``patch.size`` None: the degradation's ``hr_size``
    patch: PatchConfig = field(default_factory=PatchConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)

    def __post_init__(self) -> None:
        _check(self.views >= 1, "dataset.views", "expected an integer >= 1", self.views)
        _check(self.images_per_shard >= 1, "dataset.images_per_shard", "expected an integer >= 1",
               self.images_per_shard)
        _check(self.max_pixels >= 1, "dataset.max_pixels", "expected an integer >= 1", self.max_pixels)
        self.patch.validate("dataset.patch")


@dataclass(frozen=True)
class RunConfig:
    """How the job runs; none of it is part of the dataset id."""

    #: "ray" (embedded local Ray, or the cluster at ``ray_address``) or "inline" (this process)
    executor: Literal["ray", "inline"] = "ray"
    #: Ray degradation workers; None: one per GPU, else one per core
    workers: int | None = None
    ray_address: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: patches per degradation call
    batch_size: int = 32
    cpus_per_worker: float | None = None
    #: how often a failed shard is tried again (on another worker when there is one)
    max_retries: int = 2
    #: continue an interrupted run of the same job (without it, a half-written folder is an error)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _check_choices(self, "run")
        _check(self.batch_size >= 1, "run.batch_size", "expected an integer >= 1", self.batch_size)
        _check(self.max_retries >= 0, "run.max_retries", "expected an integer >= 0", self.max_retries)


@dataclass(frozen=True)
class SynthConfig:
    """A synth job's whole configuration: ``dataset`` (its identity) and ``run`` (its execution)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> "SynthConfig":
        """From nested plain data (YAML/JSON), then dotted ``overrides`` (``{"run.workers": 4}``)."""
        data = data or {}
        _check_inline_degradation(data)
        config = from_plain(cls, data)
        return config.replace(**overrides) if overrides else config

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` turns back into an equal config."""
        return to_plain(self)

    def replace(self, **overrides: Any) -> "SynthConfig":
        """A copy with dotted-path overrides: ``replace(**{"dataset.seed": 1, "run.executor": "inline"})``."""
        return SynthConfig.from_dict(apply_dotted(self.to_dict(), overrides))


def _check_choices(config: Any, path: str) -> None:
    """Each ``Literal``-typed field of a config dataclass holds one of its allowed values.

    :func:`from_plain` checks them when loading; this covers configs built directly in Python.
    """
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        if typing.get_origin(hints[f.name]) is Literal:
            allowed = list(typing.get_args(hints[f.name]))
            value = getattr(config, f.name)
            if value not in allowed:
                raise ConfigError(f"{join_path(path, f.name)}: {value!r} is not allowed; choose one of {allowed}")


def _check_inline_degradation(data: Mapping[str, Any]) -> None:
    """A mapping under ``dataset.degradation`` is a DegradationConfig: report its first error with
    the full path (the ``str | DegradationConfig`` union would only say that neither arm fits)."""
    dataset = data.get("dataset")
    degradation = dataset.get("degradation") if isinstance(dataset, Mapping) else None
    if isinstance(degradation, Mapping):
        try:
            DegradationConfig.from_dict(degradation)
        except ConfigError as exc:
            raise ConfigError(f"dataset.degradation.{exc}") from None


def _check(ok: bool, where: str, msg: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {msg}, got {value!r}")


__all__ = ["SynthConfig", "DatasetConfig", "RunConfig", "PatchConfig", "EncodeConfig", "ConfigError",
           "DEFAULT_PRESET"]
