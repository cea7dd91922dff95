"""Draw the full parameter record of one sample: a pure function of (config, seed, key, HR size).

The record is plain JSON (numbers, strings, lists, dicts). It holds every choice the
chain makes, so :func:`degradations.replay` needs nothing but the HR image and the record.
All draws go through :class:`~degradations.rng.SampleRng` by name, so adding a new
parameter never shifts the values of existing ones.
"""
from __future__ import annotations

import math
from typing import Any

from .config import BlurConfig, DegradationConfig, NoiseConfig, ResizeConfig
from .rng import SampleRng

RECORD_FORMAT = "pairforge-degradation-v1"


def draw_blur(rng: SampleRng, cfg: BlurConfig, name: str) -> dict[str, Any]:
    """A Gaussian-family kernel (Real-ESRGAN ``random_mixed_kernels``) or a sinc kernel."""
    size = rng.choice(f"{name}.size", list(cfg.kernel_sizes))
    support = max(cfg.kernel_sizes)  # kernels are zero-padded to the stage's largest size
    if rng.bernoulli(f"{name}.is_sinc", cfg.sinc_prob):
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return {"family": "sinc", "size": size, "support": support, "omega": rng.uniform(f"{name}.omega", lo, math.pi)}
    families = list(cfg.family_probs)
    family = rng.choice(f"{name}.family", families, [cfg.family_probs[f] for f in families])
    sigma_x = rng.uniform(f"{name}.sigma_x", *cfg.sigma_range)
    isotropic = family.endswith("_iso") or family == "iso"
    if isotropic:
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = rng.uniform(f"{name}.sigma_y", *cfg.sigma_range)
        theta = rng.uniform(f"{name}.theta", -math.pi, math.pi)
    out: dict[str, Any] = {
        "family": family,
        "size": size,
        "support": support,
        "sigma_x": sigma_x,
        "sigma_y": sigma_y,
        "theta": theta,
    }
    if family.startswith("generalized"):
        out["beta"] = _draw_beta(rng, f"{name}.beta", cfg.betag_range)
    elif family.startswith("plateau"):
        out["beta"] = _draw_beta(rng, f"{name}.beta", cfg.betap_range)
    return out


def _draw_beta(rng: SampleRng, name: str, beta_range: tuple[float, float]) -> float:
    """Real-ESRGAN's shape draw: half the time U(lo, 1), else U(1, hi).

    Kept for parity with the reference; with the plateau range [1, 2] it makes β exactly 1
    half of the time (the reference marks this ``TODO: this may be not proper``).
    """
    lo, hi = beta_range
    if rng.bernoulli(f"{name}.below_one", 0.5):
        return rng.uniform(name, lo, max(lo, min(1.0, hi)))
    return rng.uniform(name, min(max(1.0, lo), hi), hi)


def draw_resize(rng: SampleRng, cfg: ResizeConfig, name: str, in_hw: tuple[int, int], base_hw: tuple[int, int]) -> dict[str, Any]:
    """Up / down / keep with a random scale; the output size is ``int(base · scale)`` per side.

    Stage 1 rescales its own input; stage 2 rescales relative to the LR target (``base_hw``),
    exactly as the reference does (``int(ori_h / scale · s)``).
    """
    direction = rng.choice(f"{name}.direction", ["up", "down", "keep"], list(cfg.probs))
    if direction == "up":
        factor = rng.uniform(f"{name}.factor", *cfg.up_range)
    elif direction == "down":
        factor = rng.uniform(f"{name}.factor", *cfg.down_range)
    else:
        factor = 1.0
    mode = rng.choice(f"{name}.mode", list(cfg.modes))
    size = [max(1, int(base_hw[0] * factor)), max(1, int(base_hw[1] * factor))]
    return {"direction": direction, "factor": factor, "mode": mode, "size": size, "in_size": list(in_hw)}


def draw_noise(rng: SampleRng, cfg: NoiseConfig, name: str) -> dict[str, Any]:
    gray = rng.bernoulli(f"{name}.gray", cfg.gray_prob)
    seed = rng.seed32(f"{name}.field")
    if rng.bernoulli(f"{name}.is_gaussian", cfg.gaussian_prob):
        return {"type": "gaussian", "sigma": rng.uniform(f"{name}.sigma", *cfg.sigma_range), "gray": gray, "seed": seed}
    return {"type": "poisson", "scale": rng.uniform(f"{name}.scale", *cfg.poisson_scale_range), "gray": gray, "seed": seed}


def draw_record(cfg: DegradationConfig, seed: int, key: str, hr_hw: tuple[int, int]) -> dict[str, Any]:
    """Every parameter of the chain for one sample."""
    from . import __version__

    h, w = hr_hw
    if h % cfg.scale or w % cfg.scale:
        raise ValueError(f"HR size {h}x{w} is not divisible by scale {cfg.scale}")
    lr_hw = (h // cfg.scale, w // cfg.scale)
    rng = SampleRng(seed, key)

    first: dict[str, Any] = {}
    first["blur"] = draw_blur(rng, cfg.first.blur, "first.blur") if rng.bernoulli("first.blur_on", cfg.first.blur_prob) else None
    first["resize"] = draw_resize(rng, cfg.first.resize, "first.resize", (h, w), (h, w))
    cur = tuple(first["resize"]["size"])
    first["noise"] = draw_noise(rng, cfg.first.noise, "first.noise")
    first["jpeg"] = {"quality": rng.integer("first.jpeg.quality", *cfg.first.jpeg.quality_range)}

    second: dict[str, Any] = {"applied": rng.bernoulli("second.applied", cfg.second_order_prob)}
    if second["applied"]:
        second["blur"] = (
            draw_blur(rng, cfg.second.blur, "second.blur") if rng.bernoulli("second.blur_on", cfg.second.blur_prob) else None
        )
        second["resize"] = draw_resize(rng, cfg.second.resize, "second.resize", cur, lr_hw)
        cur = tuple(second["resize"]["size"])
        second["noise"] = draw_noise(rng, cfg.second.noise, "second.noise")

    order = "resize_sinc_jpeg" if rng.bernoulli("final.order", cfg.final.resize_then_jpeg_prob) else "jpeg_resize_sinc"
    sinc = None
    if rng.bernoulli("final.sinc_on", cfg.final.sinc_prob):
        sinc = {
            "family": "sinc",
            "size": rng.choice("final.sinc.size", list(cfg.final.sinc_kernel_sizes)),
            "support": max(cfg.final.sinc_kernel_sizes),
            "omega": rng.uniform("final.sinc.omega", *cfg.final.sinc_omega_range),
        }
    final = {
        "order": order,
        "resize": {"mode": rng.choice("final.resize.mode", list(cfg.final.resize_modes)), "size": list(lr_hw), "in_size": list(cur)},
        "sinc": sinc,
        "jpeg": {"quality": rng.integer("final.jpeg.quality", *cfg.second.jpeg.quality_range)},
    }
    return {
        "format": RECORD_FORMAT,
        "code_version": __version__,
        "preset": cfg.name,
        "config_fingerprint": cfg.fingerprint(),
        "seed": int(seed),
        "key": key,
        "scale": cfg.scale,
        "hr_size": [h, w],
        "jpeg_backend": cfg.jpeg_backend,
        "compute_dtype": cfg.compute_dtype,
        "usm": (
            {"radius": cfg.usm.radius, "sigma": cfg.usm.sigma, "weight": cfg.usm.weight, "threshold": cfg.usm.threshold}
            if cfg.usm.enabled
            else None
        ),
        "first": first,
        "second": second,
        "final": final,
    }
