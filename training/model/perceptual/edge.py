"""EA-DISTS, the edge-aware DISTS loss of D3SR: DISTS(x_hat, x) + DISTS(S(x_hat), S(x)).

S is the Sobel gradient magnitude sqrt(Gx^2 + Gy^2 + 1e-6) of the channel-mean grey
image, with the unnormalised kernels [[-1,0,1],[-2,0,2],[-1,0,1]] and its transpose
and zero padding (as in the D3SR lab's published demo).  We do not use
``kornia.filters.sobel``: it pads by replication, which changes the border values,
and normalises the kernel by default.  The 1-channel edge maps go straight into
DISTS, whose ImageNet normalisation broadcasts them to three channels.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from pairforge.training.model.perceptual._common import FrozenPerceptual
from pairforge.training.model.perceptual.dists import DISTS

__all__ = ["sobel_magnitude", "ea_dists", "EdgeAwareDISTS"]

_GX = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) Sobel magnitude of the channel mean, zero-padded."""
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
    gray = x.mean(dim=1, keepdim=True)
    kernels = torch.stack([_GX, _GX.t()]).unsqueeze(1).to(device=x.device, dtype=x.dtype)
    g = F.conv2d(gray, kernels, padding=1)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2 + eps)


def ea_dists(dists: DISTS, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample EA-DISTS (B,) of prediction ``x_hat`` against target ``x``, both in [0, 1]."""
    return dists(x_hat, x) + dists(sobel_magnitude(x_hat), sobel_magnitude(x))


class EdgeAwareDISTS(FrozenPerceptual):
    """EA-DISTS as a module; pass an existing :class:`DISTS` to share its weights."""

    def __init__(
        self,
        dists: DISTS | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        backbone: str = "imagenet",
    ) -> None:
        super().__init__()
        self.dists = dists if dists is not None else DISTS(weights_dir=weights_dir, backbone=backbone)
        self.backbone_source = self.dists.backbone_source
        self._freeze()

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ea_dists(self.dists, x_hat, x)
