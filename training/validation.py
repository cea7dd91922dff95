"""Validation on held-out pairs: PSNR/SSIM on the Y channel, LPIPS and DISTS, for the
generator and for the bicubic baseline (the generator's own input).

PSNR/SSIM are :mod:`pairforge.training.metrics` (BasicSR's Y-channel definitions) with no border
crop: the validation crops are small and compared run to run, not with the papers' tables
(``pairforge eval`` crops the border as the papers do).
LPIPS/DISTS run with the configured backbone (real ImageNet weights unless the user asked
for a random backbone) and every result carries ``backbone`` so reports can say which.
"""
from __future__ import annotations

import torch

from pairforge.training.metrics import psnr_y, ssim_y

__all__ = ["metric_sums", "evaluate", "psnr_y", "ssim_y"]


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
