"""Perceptual metrics and losses with real ImageNet weights, usable offline.

``DISTS``, ``LPIPS`` (alex/vgg) and ``EdgeAwareDISTS`` take images in [0, 1] and
return per-sample distances (B,).  Their trunk weights are resolved by
:func:`resolve_weights` (explicit path -> ``$TORCH_HOME`` torchvision files ->
the cache written by :func:`prepare_weights` / ``pairforge weights``); a miss
raises :class:`PerceptualWeightsMissing`.  ``backbone="random"`` exists for smoke
tests and must be asked for; every module reports ``.backbone_source``.
"""
from pairforge.training.model.perceptual.dists import DISTS
from pairforge.training.model.perceptual.edge import EdgeAwareDISTS, ea_dists, sobel_magnitude
from pairforge.training.model.perceptual.lpips import LPIPS
from pairforge.training.model.perceptual.weights import PerceptualWeightsMissing, prepare_weights, resolve_weights

__all__ = [
    "DISTS",
    "LPIPS",
    "EdgeAwareDISTS",
    "ea_dists",
    "sobel_magnitude",
    "prepare_weights",
    "resolve_weights",
    "PerceptualWeightsMissing",
]
