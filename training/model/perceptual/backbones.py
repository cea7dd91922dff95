"""VGG16 and AlexNet convolutional trunks with torchvision's ``features`` indices.

We build the trunks ourselves (a few lines) instead of instantiating the full
torchvision classifiers, which would allocate and randomly initialise ~130M
classifier parameters only to throw them away.  Module indices match
``torchvision.models.vgg16().features`` / ``alexnet().features`` exactly, so a
state dict with keys ``features.<i>.weight`` loads without renaming.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG16_CONV_INDICES", "ALEXNET_CONV_INDICES", "vgg16_features", "alexnet_features", "load_trunk"]

_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

#: ``features`` indices of the 13 VGG16 convolutions (torchvision layout).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: ``features`` indices of the 5 AlexNet convolutions (torchvision layout).
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)


def vgg16_features() -> nn.Sequential:
    """VGG16 conv trunk: conv3x3+ReLU blocks and 2x2 max-pools, 31 modules."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(v)
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """AlexNet conv trunk (torchvision's single-tower variant), 13 modules."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


def load_trunk(trunk: nn.Sequential, tensors: dict[str, torch.Tensor]) -> None:
    """Load ``features.<i>.{weight,bias}`` tensors into ``trunk``, strictly.

    Every conv must be covered and every shape must match: a partial load would
    leave random layers behind, which is exactly what we must never do silently.
    """
    prefix = "features."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    trunk.load_state_dict(state, strict=True)
