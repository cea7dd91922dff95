"""Validation on held-out pairs: PSNR/SSIM on the Y channel, LPIPS and DISTS, for the
generator and for the bicubic baseline (the generator's own input).

PSNR/SSIM are :mod:`pairforge.training.model.metrics` (BasicSR's Y-channel definitions) with no border
crop: the validation crops are small and compared run to run, not with the papers' tables
(``pairforge eval`` crops the border as the papers do).
LPIPS/DISTS run with the configured backbone (real ImageNet weights unless the user asked
for a random backbone) and every result carries ``backbone`` so reports can say which.

The discriminator is measured on the same pairs (:func:`discriminator_sums`): whether it tells
the held-out real latents from the generator's, per diffusion-time bucket.
"""
from __future__ import annotations

import torch

from pairforge.training.loop.losses import D_T_BUCKETS, d_bucket_sums
from pairforge.training.model.metrics import psnr_y, ssim_y

__all__ = ["metric_sums", "evaluate", "discriminator_sums", "psnr_y", "ssim_y"]


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


@torch.no_grad()
def discriminator_sums(latents, discriminator, batches, device, seed: int = 0) -> dict[str, float]:
    """D's per-bucket sums (:func:`~pairforge.training.loop.losses.d_bucket_sums`) on held-out pairs.

    ``latents(lr_up, hr)`` returns the generator's dict (``z_real``, ``z_fake``, ``sr``). Every
    pair is scored once per bucket of :data:`~pairforge.training.loop.losses.D_T_BUCKETS`: real and fake
    noised to one t drawn in the bucket (independent noise, as in training). ``seed`` fixes t and
    noise, so validations of one run differ only by the networks.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    sums: dict[str, float] = {}
    for b in batches:
        lr_up, hr = b["lr_up"].to(device), b["hr"].to(device)
        out = latents(lr_up, hr)
        z_real, z_fake = out["z_real"], out["z_fake"]
        for lo, hi in D_T_BUCKETS:
            t = torch.randint(lo, hi, (hr.shape[0],), device=device, generator=gen)
            noise_r = torch.randn(discriminator.latent_shape(z_real, hr), device=device, generator=gen)
            noise_f = torch.randn(discriminator.latent_shape(z_fake, out["sr"]), device=device, generator=gen)
            real = discriminator(z_real, t, noise_r, image01=hr.to(z_real.dtype))
            fake = discriminator(z_fake, t, noise_f, image01=out["sr"])
            for k, v in d_bucket_sums(real, fake, t).items():
                sums[k] = sums.get(k, 0.0) + v
    return sums
