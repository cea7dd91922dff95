"""Validation on held-out pairs: PSNR/SSIM on the Y channel, LPIPS and DISTS, for the
generator and for the bicubic baseline (the generator's own input).

Y = 16 + 65.481·R + 128.553·G + 24.966·B (BT.601, inputs in [0, 1], Y in [0, 255]).
SSIM: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, 'valid' filtering. No border crop.
LPIPS/DISTS run with the configured backbone (real ImageNet weights unless the user asked
for a random backbone) and every result carries ``backbone`` so reports can say which.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([65.481, 128.553, 24.966], device=x.device, dtype=torch.float64).view(1, 3, 1, 1)
    return (x.double() * w).sum(1, keepdim=True) + 16.0


def psnr_y(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) on Y, images in [0, 1] quantised to 8 bit first."""
    x, y = (x * 255).round() / 255, (y * 255).round() / 255
    mse = ((rgb_to_y(x) - rgb_to_y(y)) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(g ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = (x * 255).round() / 255, (y * 255).round() / 255
    a, b = rgb_to_y(x), rgb_to_y(y)
    k = _gauss().to(a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    s_aa = F.conv2d(a * a, k) - mu_a ** 2
    s_bb = F.conv2d(b * b, k) - mu_b ** 2
    s_ab = F.conv2d(a * b, k) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return m.mean(dim=(1, 2, 3))


@torch.no_grad()
def metric_sums(sr: torch.Tensor, hr: torch.Tensor, nets: dict) -> dict[str, float]:
    sr, hr = sr.float().clamp(0, 1), hr.float()
    out = {"psnr": float(psnr_y(sr, hr).sum()), "ssim": float(ssim_y(sr, hr).sum())}
    if "lpips" in nets:
        out["lpips"] = float(nets["lpips"](sr, hr).sum())
    if "dists" in nets:
        out["dists"] = float(nets["dists"](sr, hr).sum())
    return out


@torch.no_grad()
def evaluate(generate, batches, nets: dict, device, dtype=torch.float32) -> tuple[dict[str, float], int, tuple | None]:
    """Sum metrics over ``batches`` for ``generate(lr_up) -> sr`` and for bicubic.

    Returns (sums keyed 'sr_*' / 'bicubic_*', count, first (lr_up, sr, hr) triple for grids).
    """
    sums: dict[str, float] = {}
    n = 0
    first = None
    for b in batches:
        lr_up, hr = b["lr_up"].to(device), b["hr"].to(device)
        sr = generate(lr_up.to(dtype)).float()
        for prefix, img in (("sr", sr), ("bicubic", lr_up)):
            for k, v in metric_sums(img, hr, nets).items():
                sums[f"{prefix}_{k}"] = sums.get(f"{prefix}_{k}", 0.0) + v
        n += hr.shape[0]
        if first is None:
            first = (lr_up.cpu(), sr.cpu(), hr.cpu())
    return sums, n, first
