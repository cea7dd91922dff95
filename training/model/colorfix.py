"""Colour correction of a super-resolved image against its bicubic-upscaled input.

A one-step diffusion generator can shift global colour (its VAE and UNet were trained on other
images, and a tile's statistics differ from the whole image's). OSEDiff and StableSR correct
this after decoding with one of two fixes, written here from their description:

- ``adain``: per-channel mean and standard deviation of the output are set to the reference's
  (adaptive instance normalisation). Global; cheap; keeps all spatial detail of the output.
- ``wavelet``: the output's low-frequency band is replaced with the reference's. The bands come
  from an à-trous ("wavelet") decomposition: a 3×3 binomial blur applied with dilation 1, 2, 4,
  8, 16, each level's residual being one high-frequency band. Local colour follows the input,
  fine detail follows the output.

Both take and return (B,3,H,W) float tensors on any device; results are not clamped.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ColorFix = Literal["none", "adain", "wavelet"]
COLOR_FIXES: tuple[str, ...] = ("none", "adain", "wavelet")

#: decomposition depth; the coarsest blur has dilation 2**(levels-1)
WAVELET_LEVELS = 5


def _check(image: torch.Tensor, reference: torch.Tensor) -> None:
    if image.shape != reference.shape or image.dim() != 4:
        raise ValueError(f"colour fix needs two (B,C,H,W) tensors of one shape, got "
                         f"{tuple(image.shape)} and {tuple(reference.shape)}")


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``image`` with each channel's spatial mean/std replaced by ``reference``'s."""
    _check(image, reference)
    x, r = image.float(), reference.float()
    mean_x, std_x = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
    mean_r, std_r = r.mean(dim=(2, 3), keepdim=True), r.std(dim=(2, 3), keepdim=True)
    return (x - mean_x) / (std_x + eps) * std_r + mean_r


def wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """One level of the à-trous decomposition: a 3×3 binomial kernel with holes of ``dilation``.

    Borders are replicated (not zero-padded) so the blurred image keeps its colour at the edges.
    """
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    c = image.shape[1]
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=dilation)


def wavelet_decomposition(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(high, low)`` with ``high + low == image``: ``low`` is the image blurred at every level."""
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = wavelet_blur(low, 2 ** i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """``image``'s high-frequency bands on top of ``reference``'s low-frequency band."""
    _check(image, reference)
    high, _ = wavelet_decomposition(image.float(), levels)
    _, low = wavelet_decomposition(reference.float(), levels)
    return high + low


def apply_color_fix(image: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Dispatch on ``method`` (one of :data:`COLOR_FIXES`)."""
    if method == "none":
        return image
    if method == "adain":
        return adain_color_fix(image, reference)
    if method == "wavelet":
        return wavelet_color_fix(image, reference)
    raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIXES)}")
