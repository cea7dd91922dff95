"""Full-reference SR metrics on the Y channel, as the SR papers compute them.

PSNR and SSIM follow BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True`` (the definition the one-step diffusion SR papers report):

- images are 8-bit: a float input in [0, 1] is first quantised to k/255 (as the saved PNG);
- ``crop_border`` pixels are dropped on every side;
- Y = 16 + (65.481·R + 128.553·G + 24.966·B) with R, G, B in [0, 1] (BT.601, Y in [16, 235]),
  kept as float (no rounding), computed in float64;
- PSNR = 10·log10(255² / mean((Y₁ − Y₂)²));
- SSIM: 11×11 Gaussian window of σ 1.5, 'valid' filtering (no padding), C1 = (0.01·255)²,
  C2 = (0.03·255)², averaged over the map.

One deliberate difference: BasicSR returns ``inf`` for identical images; here the MSE is floored
at 1e-10 (≈148 dB), so tables and JSON stay finite. The trainer's validation uses these functions
with ``crop_border=0``. LPIPS and DISTS are in :mod:`pairforge.training.model.perceptual`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pairforge.errors import UsageError

__all__ = ["ImageTooSmall", "quantize", "rgb_to_y", "crop_border", "psnr_y", "ssim_y", "gaussian_window", "SSIM_WINDOW"]

#: side of the SSIM window: a 'valid' SSIM map needs images at least this large after the crop
SSIM_WINDOW = 11
_Y_WEIGHTS = (65.481, 128.553, 24.966)


class ImageTooSmall(UsageError, ValueError):
    """An image the metrics cannot take at this border crop: smaller images or a smaller crop (exit 2)."""


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → the nearest k/255, the value an 8-bit image file would hold."""
    return (x * 255).round() / 255


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) float64 BT.601 luma in [16, 235]."""
    w = torch.tensor(_Y_WEIGHTS, device=x.device, dtype=torch.float64).view(1, 3, 1, 1)
    return (x.double() * w).sum(1, keepdim=True) + 16.0


def crop_border(x: torch.Tensor, n: int) -> torch.Tensor:
    """Drop ``n`` pixels on each side of the last two dimensions; a clear error if none are left."""
    if n < 0:
        raise ValueError(f"crop_border must be >= 0, got {n}")
    h, w = x.shape[-2:]
    if 2 * n >= min(h, w):
        raise ImageTooSmall(f"crop_border {n} leaves nothing of a {h}x{w} image")
    return x[..., n:h - n, n:w - n] if n else x


def _prepare(x: torch.Tensor, y: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = rgb_to_y(quantize(x)), rgb_to_y(quantize(y))
    return crop_border(a, border), crop_border(b, border)


def psnr_y(x: torch.Tensor, y: torch.Tensor, crop: int = 0) -> torch.Tensor:
    """Per-image PSNR (B,) in dB on Y; images (B, 3, H, W) in [0, 1]; ``crop`` border pixels dropped."""
    a, b = _prepare(x, y, crop)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 2-D Gaussian (1, 1, size, size), float64: outer product of the 1-D kernel."""
    g = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(g ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(x: torch.Tensor, y: torch.Tensor, crop: int = 0) -> torch.Tensor:
    """Per-image SSIM (B,) on Y; images (B, 3, H, W) in [0, 1]; ``crop`` border pixels dropped."""
    a, b = _prepare(x, y, crop)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ImageTooSmall(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the border crop, "
                         f"got {a.shape[-2]}x{a.shape[-1]}")
    k = gaussian_window().to(a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    s_aa = F.conv2d(a * a, k) - mu_a ** 2
    s_bb = F.conv2d(b * b, k) - mu_b ** 2
    s_ab = F.conv2d(a * b, k) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return m.mean(dim=(1, 2, 3))
