"""Shared plumbing for the frozen perceptual modules."""
from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("imagenet", "random")


def check_backbone(backbone: str) -> None:
    """Only the two names are accepted, so a typo can never mean 'random'."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")


def check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """(B, C, H, W) pairs of equal shape; C is 1 or 3."""
    if x.dim() != 4 or x.shape != y.shape or x.shape[1] not in (1, 3):
        raise ValueError(f"expected two (B, 1|3, H, W) tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")


class FrozenPerceptual(nn.Module):
    """Base class: parameters never require grad and the module stays in eval mode.

    The perceptual nets live outside the training engines; if a parent module calls
    ``.train()`` they must still behave as fixed functions of their input.
    """

    backbone_source: str

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenPerceptual":
        return super().train(False)

    @property
    def is_random(self) -> bool:
        """True when the backbone is random (scores are then not DISTS/LPIPS values)."""
        return self.backbone_source == "random"

    def extra_repr(self) -> str:
        return f"backbone_source={self.backbone_source!r}"
