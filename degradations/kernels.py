"""Blur kernels built batched on the device from per-sample parameters.

kornia has only axis-aligned Gaussians of one size per call, so the rotated, generalized,
plateau and sinc kernels of the Real-ESRGAN chain are written here in plain torch on a
fixed 21×21 grid: one quadratic form Q = [x y] Σ⁻¹ [x y]ᵀ per sample, the family's radial
profile, a mask to the sample's own size, then normalization. Kernels smaller than 21
are zero-padded (centred), as the reference does, so a batch shares one shape.

Definitions (Real-ESRGAN / BasicSR ``degradations.py``):
  Gaussian      k ∝ exp(−½ Q)
  generalized   k ∝ exp(−½ Q^β)
  plateau       k ∝ 1 / (Q^β + 1)
  sinc          k(r) = ω J₁(ω r) / (2π r), k(0) = ω² / (4π)   (circular low-pass, cutoff ω)
with Σ = R(θ) diag(σx², σy²) R(θ)ᵀ and the grid's x running along columns, y along rows.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import torch

from .config import MAX_KERNEL_SIZE

FAMILY_CODES = {
    "delta": 0,
    "iso": 1,
    "aniso": 1,
    "generalized_iso": 2,
    "generalized_aniso": 2,
    "plateau_iso": 3,
    "plateau_aniso": 3,
    "sinc": 4,
}


@lru_cache(maxsize=8)
def kernel_grid(size: int = MAX_KERNEL_SIZE, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
    """(x, y) coordinate grids of shape (size, size), centred on 0; x varies along columns.

    Cached (callers only read them): the CPU chain builds one kernel at a time."""
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def build_kernels(params: Sequence[dict[str, Any] | None], device: torch.device | str = "cpu", size: int = MAX_KERNEL_SIZE) -> torch.Tensor:
    """Kernels (B, size, size) float32 for a list of blur records (``None`` = identity).

    Computed in float64 and rounded once, so a kernel does not depend on the device's
    reduction order: CPU and CUDA kernels agree to float32 rounding.
    """
    n = len(params)
    rows = []
    for p in params:
        if p is None:
            rows.append((0, 1, 1.0, 1.0, 0.0, 1.0, 1.0))
            continue
        code = FAMILY_CODES[p["family"]]
        rows.append(
            (
                code,
                int(p["size"]),
                float(p.get("sigma_x", 1.0)),
                float(p.get("sigma_y", 1.0)),
                float(p.get("theta", 0.0)),
                float(p.get("beta", 1.0)),
                float(p.get("omega", 1.0)),
            )
        )
    t = torch.tensor(rows, dtype=torch.float64, device=device).view(n, 7)
    xx, yy = kernel_grid(size, device)
    kernel = ((xx == 0) & (yy == 0)).to(torch.float64).expand(n, size, size).clone()  # delta
    # each family only for the kernels that use it (the sinc's Bessel function is the
    # costliest): with one kernel per call, as on CPU, computing all four cost 4x
    by_code: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_code.setdefault(int(row[0]), []).append(i)
    for code, index in by_code.items():
        if code == 0:
            continue
        idx = torch.as_tensor(index, device=device)
        kernel.index_copy_(0, idx, _family(code, t.index_select(0, idx), xx, yy))
    half = (t[:, 1].view(n, 1, 1) - 1) / 2
    inside = (xx.abs() <= half) & (yy.abs() <= half)
    kernel = kernel * inside
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    return kernel.to(torch.float32)


def _family(code: int, t: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """Unnormalized (m, size, size) kernels of one family from parameter rows ``t`` (m, 7)."""
    m = t.shape[0]
    _, _, sx, sy, theta, beta, omega = (t[:, i].view(m, 1, 1) for i in range(7))
    if code == 4:
        r = torch.sqrt(xx * xx + yy * yy)
        r_safe = torch.where(r == 0, torch.ones_like(r), r)
        return torch.where(r == 0, omega**2 / (4 * math.pi), omega * torch.special.bessel_j1(omega * r_safe) / (2 * math.pi * r_safe))
    # Σ⁻¹ = R diag(1/σx², 1/σy²) Rᵀ, then Q = [x y] Σ⁻¹ [x y]ᵀ
    c, s = torch.cos(theta), torch.sin(theta)
    ix, iy = 1.0 / sx**2, 1.0 / sy**2
    a = c * c * ix + s * s * iy
    b = c * s * (ix - iy)
    d = s * s * ix + c * c * iy
    q = a * xx * xx + 2 * b * xx * yy + d * yy * yy
    if code == 1:
        return torch.exp(-0.5 * q)
    if code == 2:
        return torch.exp(-0.5 * q.pow(beta))
    if code == 3:
        return 1.0 / (q.pow(beta) + 1.0)
    raise ValueError(f"unknown kernel family code {code}")


def gaussian_kernel1d(radius: int, sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalized 1-D Gaussian taps (radius = number of taps, odd); matches cv2.getGaussianKernel."""
    x = torch.arange(radius, dtype=torch.float64, device=device) - (radius - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).to(torch.float32)


def opencv_default_sigma(radius: int) -> float:
    """σ that ``cv2.getGaussianKernel(radius, 0)`` uses (σ = 0.3·((n−1)·0.5 − 1) + 0.8)."""
    return 0.3 * ((radius - 1) * 0.5 - 1) + 0.8
