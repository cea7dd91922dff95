"""DISTS (Ding et al., 2020): structure and texture similarity on VGG16 features.

Score = 1 - sum_k (alpha_k * S1_k + beta_k * S2_k) over the input's channels and the
relu1_2 .. relu5_3 VGG16 feature maps (3+64+128+256+512+512 = 1475 channels), with
alpha/beta normalised to sum to 1.  S1 compares spatial means (texture), S2 the
covariance (structure), both with c = 1e-6.  The trunk's max-pools are replaced by
"L2 pooling" (Hann-window blur of x^2, stride 2, then sqrt), which is part of the
metric's definition, and inputs are ImageNet-normalised [0,1] images.

A 1-channel input is accepted and behaves like the reference implementations do
when fed Sobel maps (as EA-DISTS does): it broadcasts against the 3-channel
ImageNet mean/std into the trunk, and its 1-channel "stage 0" statistics are
weighted by the sum of the three input-channel alpha/beta weights.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from pairforge.training.model.perceptual._common import FrozenPerceptual, check_backbone, check_images
from pairforge.training.model.perceptual.backbones import load_trunk, vgg16_features
from pairforge.training.model.perceptual.weights import resolve_weights

__all__ = ["DISTS", "L2Pool"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CHANNELS = (3, 64, 128, 256, 512, 512)
# features indices closing each VGG16 stage (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
_STAGE_ENDS = (4, 9, 16, 23, 30)


class L2Pool(nn.Module):
    """sqrt(blur(x^2)) with the 3x3 normalised Hann window [.5, 1, .5]^2, stride 2, pad 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        w = torch.tensor([0.5, 1.0, 0.5])
        k = w[:, None] * w[None, :]
        self.register_buffer("kernel", (k / k.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.kernel, stride=2, padding=1, groups=x.shape[1])
        return torch.sqrt(out + 1e-12)


class DISTS(FrozenPerceptual):
    """DISTS distance, inputs in [0, 1], shape (B, 3|1, H, W) -> (B,); differentiable.

    ``weights_dir`` is an explicit weights location (see :func:`resolve_weights`);
    ``backbone="random"`` builds an untrained trunk with uniform alpha/beta and must
    be asked for by name (``.backbone_source == "random"``, ``.is_random``).
    """

    def __init__(self, weights_dir: str | os.PathLike[str] | None = None, backbone: str = "imagenet") -> None:
        super().__init__()
        check_backbone(backbone)
        trunk = vgg16_features()
        n = sum(_CHANNELS)
        if backbone == "imagenet":
            resolved = resolve_weights("vgg16", weights_dir)
            load_trunk(trunk, resolved.tensors)
            ab = resolve_weights("dists", weights_dir).tensors
            alpha, beta = ab["alpha"].reshape(1, n, 1, 1), ab["beta"].reshape(1, n, 1, 1)
            self.backbone_source = resolved.source
        else:
            alpha = beta = torch.full((1, n, 1, 1), 0.5 / n)
            self.backbone_source = "random"
        stages, start = [], 0
        for end in _STAGE_ENDS:
            mods = [trunk[i] for i in range(start, end)]
            if start > 0:  # the max-pool opening stages 2..5 becomes an L2 pool
                mods[0] = L2Pool(mods[1].in_channels)
            stages.append(nn.Sequential(*mods))
            start = end
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        total = alpha.sum() + beta.sum()
        self.register_buffer("alpha", (alpha / total).float())
        self.register_buffer("beta", (beta / total).float())
        self._freeze()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input itself followed by the five stage outputs."""
        h = (x - self.mean) / self.std
        feats = [x]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x, y)
        dtype = self.mean.dtype
        fx, fy = self.features(x.to(dtype)), self.features(y.to(dtype))
        alphas = torch.split(self.alpha, _CHANNELS, dim=1)
        betas = torch.split(self.beta, _CHANNELS, dim=1)
        c1 = c2 = 1e-6
        sim = x.new_zeros((x.shape[0], 1, 1, 1), dtype=dtype)
        for a, b, u, v in zip(alphas, betas, fx, fy):
            mu, mv = u.mean((2, 3), keepdim=True), v.mean((2, 3), keepdim=True)
            s1 = (2 * mu * mv + c1) / (mu**2 + mv**2 + c1)
            var_u = ((u - mu) ** 2).mean((2, 3), keepdim=True)
            var_v = ((v - mv) ** 2).mean((2, 3), keepdim=True)
            cov = (u * v).mean((2, 3), keepdim=True) - mu * mv
            s2 = (2 * cov + c2) / (var_u + var_v + c2)
            # (1,C,1,1) * (B,C|1,1,1): a 1-channel stage 0 broadcasts over the 3 weights
            sim = sim + (a * s1).sum(1, keepdim=True) + (b * s2).sum(1, keepdim=True)
        return 1 - sim.flatten()
