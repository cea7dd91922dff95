"""Typed, validated configuration of the second-order degradation chain.

Every range of the Real-ESRGAN chain is a field here so that a preset is data, not code,
and so that a YAML file can change any of it. Validation happens at construction and
names the offending field with its dotted path and the allowed values, because a typo in
a 50-field config otherwise surfaces as a NaN three stages later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from pairforge.config import ConfigError, Presets, apply_dotted, deep_merge, fingerprint, from_plain, to_plain

KERNEL_FAMILIES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
RESIZE_MODES = ("area", "bilinear", "bicubic")
JPEG_BACKENDS = ("real", "differentiable")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
FINAL_ORDERS = ("resize_sinc_jpeg", "jpeg_resize_sinc")
#: Largest kernel side; every kernel is zero-padded to this so one batch shares a shape.
MAX_KERNEL_SIZE = 21


@dataclass(frozen=True)
class BlurConfig:
    """One random blur kernel: a mixed Gaussian-family kernel, or (with ``sinc_prob``) a sinc."""

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    family_probs: Mapping[str, float] = field(
        default_factory=lambda: {
            "iso": 0.45,
            "aniso": 0.25,
            "generalized_iso": 0.12,
            "generalized_aniso": 0.03,
            "plateau_iso": 0.12,
            "plateau_aniso": 0.03,
        }
    )
    sigma_range: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1

    def validate(self, path: str) -> None:
        if not self.kernel_sizes:
            raise ConfigError(f"{path}.kernel_sizes: must list at least one size")
        for k in self.kernel_sizes:
            if not (isinstance(k, int) and k % 2 == 1 and 3 <= k <= MAX_KERNEL_SIZE):
                raise ConfigError(
                    f"{path}.kernel_sizes: {k!r} is not allowed; sizes must be odd integers in [3, {MAX_KERNEL_SIZE}]"
                )
        unknown = set(self.family_probs) - set(KERNEL_FAMILIES)
        if unknown:
            raise ConfigError(f"{path}.family_probs: unknown families {sorted(unknown)}; allowed: {list(KERNEL_FAMILIES)}")
        _check_probs(f"{path}.family_probs", list(self.family_probs.values()))
        _check_range(f"{path}.sigma_range", self.sigma_range, 1e-3, 50.0)
        _check_range(f"{path}.betag_range", self.betag_range, 1e-2, 16.0)
        _check_range(f"{path}.betap_range", self.betap_range, 1e-2, 16.0)
        _check_prob(f"{path}.sinc_prob", self.sinc_prob)


@dataclass(frozen=True)
class ResizeConfig:
    """Random rescale: up / down / keep with probabilities, a scale range per direction, a mode."""

    probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    up_range: tuple[float, float] = (1.0, 1.5)
    down_range: tuple[float, float] = (0.15, 1.0)
    modes: tuple[str, ...] = RESIZE_MODES

    def validate(self, path: str) -> None:
        if len(self.probs) != 3:
            raise ConfigError(f"{path}.probs: needs three probabilities (up, down, keep), got {list(self.probs)}")
        _check_probs(f"{path}.probs", list(self.probs))
        _check_range(f"{path}.up_range", self.up_range, 1.0, 4.0)
        _check_range(f"{path}.down_range", self.down_range, 0.05, 1.0)
        _check_choices(f"{path}.modes", self.modes, RESIZE_MODES)


@dataclass(frozen=True)
class NoiseConfig:
    """Additive Gaussian (σ in 0–255 units) or Poisson (scale) noise, optionally gray."""

    gaussian_prob: float = 0.5
    sigma_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.4

    def validate(self, path: str) -> None:
        _check_prob(f"{path}.gaussian_prob", self.gaussian_prob)
        _check_range(f"{path}.sigma_range", self.sigma_range, 0.0, 255.0)
        _check_range(f"{path}.poisson_scale_range", self.poisson_scale_range, 0.0, 20.0)
        _check_prob(f"{path}.gray_prob", self.gray_prob)


@dataclass(frozen=True)
class JpegConfig:
    """JPEG quality range (integers, as libjpeg takes them)."""

    quality_range: tuple[int, int] = (30, 95)

    def validate(self, path: str) -> None:
        lo, hi = self.quality_range
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 100):
            raise ConfigError(f"{path}.quality_range: {list(self.quality_range)} must be integers with 1 <= lo <= hi <= 100")


@dataclass(frozen=True)
class StageConfig:
    """One order of the chain: blur → resize → noise → JPEG.

    As in Real-ESRGAN, the second stage's JPEG is the one applied in the final step
    (``final``: resize to LR size + sinc + JPEG, in a random order), so ``second.jpeg`` is
    the final JPEG's quality range.
    """

    blur_prob: float = 1.0
    blur: BlurConfig = field(default_factory=BlurConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    jpeg: JpegConfig = field(default_factory=JpegConfig)

    def validate(self, path: str) -> None:
        _check_prob(f"{path}.blur_prob", self.blur_prob)
        self.blur.validate(f"{path}.blur")
        self.resize.validate(f"{path}.resize")
        self.noise.validate(f"{path}.noise")
        self.jpeg.validate(f"{path}.jpeg")


@dataclass(frozen=True)
class FinalConfig:
    """The last step: resize to LR size, a sinc filter and a JPEG, in one of two orders."""

    sinc_prob: float = 0.8
    sinc_kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    sinc_omega_range: tuple[float, float] = (math.pi / 3, math.pi)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    resize_then_jpeg_prob: float = 0.5  # order (a) resize → sinc → JPEG; else (b) JPEG → resize → sinc

    def validate(self, path: str) -> None:
        _check_prob(f"{path}.sinc_prob", self.sinc_prob)
        for k in self.sinc_kernel_sizes:
            if not (isinstance(k, int) and k % 2 == 1 and 3 <= k <= MAX_KERNEL_SIZE):
                raise ConfigError(f"{path}.sinc_kernel_sizes: {k!r} must be an odd integer in [3, {MAX_KERNEL_SIZE}]")
        _check_range(f"{path}.sinc_omega_range", self.sinc_omega_range, 1e-3, math.pi)
        _check_choices(f"{path}.resize_modes", self.resize_modes, RESIZE_MODES)
        _check_prob(f"{path}.resize_then_jpeg_prob", self.resize_then_jpeg_prob)


@dataclass(frozen=True)
class UsmConfig:
    """Unsharp masking of the HR input (Real-ESRGAN's ``USMSharp``): 51-tap Gaussian, σ=8."""

    enabled: bool = False
    radius: int = 51
    sigma: float = 8.0
    weight: float = 0.5
    threshold: float = 10.0

    def validate(self, path: str) -> None:
        if not (isinstance(self.radius, int) and self.radius % 2 == 1 and 3 <= self.radius <= 101):
            raise ConfigError(f"{path}.radius: {self.radius!r} must be an odd integer in [3, 101]")
        _check_range(f"{path}.sigma", (self.sigma, self.sigma), 0.1, 50.0)
        _check_range(f"{path}.weight", (self.weight, self.weight), 0.0, 4.0)
        _check_range(f"{path}.threshold", (self.threshold, self.threshold), 0.0, 255.0)


@dataclass(frozen=True)
class DegradationConfig:
    """The whole second-order chain and how to run it.

    ``hr_size`` is the HR patch side the preset is meant for (the pipeline crops to it);
    the engine itself accepts any HR size divisible by ``scale``.

    ``second_order_prob`` is the chance, per sample, that the second stage (blur₂ → resize₂ →
    noise₂) runs at all (ResShift/SinSR: 0.5; Real-ESRGAN: always). The coin has its own named
    stream, so it changes no other draw, and each record says ``second.applied``. The field
    has always been part of the config (default 1.0), so fingerprints of existing configs stay.
    """

    name: str = "custom"
    scale: int = 4
    hr_size: int = 256
    usm: UsmConfig = field(default_factory=UsmConfig)
    first: StageConfig = field(default_factory=StageConfig)
    second_order_prob: float = 1.0
    second: StageConfig = field(
        default_factory=lambda: StageConfig(
            blur_prob=0.8,
            blur=BlurConfig(sigma_range=(0.2, 1.5)),
            resize=ResizeConfig(probs=(0.3, 0.4, 0.3), up_range=(1.0, 1.2), down_range=(0.3, 1.0)),
            noise=NoiseConfig(sigma_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5)),
        )
    )
    final: FinalConfig = field(default_factory=FinalConfig)
    jpeg_backend: Literal["real", "differentiable"] = "real"
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name: must be a non-empty string")
        if self.scale not in (2, 4, 8):
            raise ConfigError(f"scale: {self.scale!r} is not allowed; choose 2, 4 or 8")
        if not (isinstance(self.hr_size, int) and self.hr_size >= 16 * self.scale and self.hr_size % self.scale == 0):
            raise ConfigError(
                f"hr_size: {self.hr_size!r} must be an integer multiple of scale ({self.scale}) and >= {16 * self.scale}"
            )
        self.usm.validate("usm")
        self.first.validate("first")
        _check_prob("second_order_prob", self.second_order_prob)
        self.second.validate("second")
        self.final.validate("final")
        if self.jpeg_backend not in JPEG_BACKENDS:
            raise ConfigError(f"jpeg_backend: {self.jpeg_backend!r} is not allowed; choose one of {list(JPEG_BACKENDS)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype: {self.compute_dtype!r} is not allowed; choose one of {list(COMPUTE_DTYPES)}")

    # --- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal config."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DegradationConfig":
        """Build from nested plain data (YAML/JSON); unknown or mistyped fields name their path."""
        return from_plain(cls, data, "")

    def replace(self, **overrides: Any) -> "DegradationConfig":
        """A copy with dotted-path overrides, e.g. ``replace(**{"first.jpeg.quality_range": (60, 95)})``."""
        return DegradationConfig.from_dict(apply_dotted(self.to_dict(), overrides))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: equal configs, equal fingerprints (dataset ids use it)."""
        return fingerprint(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- validation helpers ----------------------------------------------------------------------
def _check_prob(path: str, p: Any) -> None:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0.0 <= p <= 1.0):
        raise ConfigError(f"{path}: {p!r} must be a probability in [0, 1]")


def _check_probs(path: str, ps: list[Any]) -> None:
    for p in ps:
        _check_prob(path, p)
    if not math.isclose(sum(ps), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{path}: probabilities {ps} must sum to 1 (sum is {sum(ps):.6g})")


def _check_range(path: str, rng: Any, lo: float, hi: float) -> None:
    ok = (
        isinstance(rng, (tuple, list))
        and len(rng) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
        and lo <= rng[0] <= rng[1] <= hi
    )
    if not ok:
        raise ConfigError(f"{path}: {list(rng) if isinstance(rng, (tuple, list)) else rng!r} must be [lo, hi] with {lo:g} <= lo <= hi <= {hi:g}")


def _check_choices(path: str, values: Any, allowed: tuple[str, ...]) -> None:
    if not values or any(v not in allowed for v in values):
        raise ConfigError(f"{path}: {list(values)} must be a non-empty subset of {list(allowed)}")


# --- presets -----------------------------------------------------------------------------------
PRESET_DIR = Path(__file__).with_name("presets")
#: ``family_probs`` is one value (a probability table): a file that sets it replaces it whole
_PRESETS = Presets(PRESET_DIR, "degradation preset", atomic=("family_probs",))


def available_presets() -> list[str]:
    """Names of the bundled presets (the YAML files in ``degradations/presets``)."""
    return _PRESETS.names()


def load_preset(name_or_path: str | Path, **overrides: Any) -> DegradationConfig:
    """Load a bundled preset by name, or any YAML file by path; apply dotted overrides.

    A file may start from another preset with ``base: NAME`` and change only some fields.

    >>> load_preset("osediff").scale
    4
    >>> load_preset("realesrgan-x4plus", scale=2).scale
    2
    """
    data = deep_merge(DegradationConfig().to_dict(), _PRESETS.load(name_or_path), atomic=_PRESETS.atomic)
    cfg = DegradationConfig.from_dict(data)
    return cfg.replace(**overrides) if overrides else cfg
