"""LPIPS v0.1 (Zhang et al., 2018) with AlexNet or VGG16 trunks.

Inputs in [0, 1] are mapped to [-1, 1] and shifted/scaled by LPIPS's fixed
"ScalingLayer" constants; at five ReLU taps the features are unit-normalised
across channels, their squared difference is weighted per channel by the learned
``lin0..lin4`` heads (non-negative 1x1 convs, no bias), averaged over space and
summed over taps.  Dropout in the heads is a training-time detail of the original
and is absent here (this module is always in eval mode).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from pairforge.training.model.perceptual._common import FrozenPerceptual, check_backbone, check_images
from pairforge.training.model.perceptual.backbones import alexnet_features, load_trunk, vgg16_features
from pairforge.training.model.perceptual.weights import resolve_weights

__all__ = ["LPIPS"]

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# (trunk builder, weights kind, heads kind, features indices of the 5 ReLU taps, tap channels)
_NETS = {
    "alex": (alexnet_features, "alexnet", "lpips_alex", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": (vgg16_features, "vgg16", "lpips_vgg", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}


class LPIPS(FrozenPerceptual):
    """LPIPS distance, inputs in [0, 1], shape (B, 3, H, W) -> (B,); differentiable.

    ``net`` is ``"alex"`` (the usual metric) or ``"vgg"`` (the usual loss).
    ``backbone="random"`` (asked for by name only) uses an untrained trunk and
    uniform heads; ``.backbone_source`` says which one a report is looking at.
    """

    def __init__(self, net: str = "alex", weights_dir: str | os.PathLike[str] | None = None, backbone: str = "imagenet") -> None:
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"net must be one of {tuple(_NETS)}, got {net!r}")
        check_backbone(backbone)
        build, trunk_kind, heads_kind, taps, chans = _NETS[net]
        trunk = build()
        if backbone == "imagenet":
            resolved = resolve_weights(trunk_kind, weights_dir)
            load_trunk(trunk, resolved.tensors)
            heads = resolve_weights(heads_kind, weights_dir).tensors
            lins = [heads[f"lin{k}.model.1.weight"].reshape(1, c, 1, 1) for k, c in enumerate(chans)]
            self.backbone_source = resolved.source
        else:
            lins = [torch.full((1, c, 1, 1), 1.0 / c) for c in chans]
            self.backbone_source = "random"
        self.net = net
        self.trunk = trunk[: taps[-1] + 1]
        self.taps = taps
        for k, w in enumerate(lins):
            self.register_buffer(f"lin{k}", w.float().contiguous())
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self._freeze()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised activations at the five ReLU taps."""
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if i in self.taps:
                out.append(h / (torch.sqrt((h * h).sum(1, keepdim=True)) + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x, y)
        dtype = self.shift.dtype
        fx, fy = self.features(x.to(dtype)), self.features(y.to(dtype))
        total = x.new_zeros((x.shape[0],), dtype=dtype)
        for k, (u, v) in enumerate(zip(fx, fy)):
            d = F.conv2d((u - v) ** 2, getattr(self, f"lin{k}").view(1, -1, 1, 1))
            total = total + d.mean((1, 2, 3))
        return total
