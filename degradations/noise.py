"""Additive Gaussian and Poisson noise, drawn per sample, gray or color per sample.

Each sample's field comes from its own ``torch.Generator`` seeded from its record, so it
depends on nothing else in the batch. (A counter-based integer hash was tried for Gaussian
fields to avoid the per-sample loop: on CPU it was far slower than ``torch.randn``.)
The reference draws one gray field for the whole batch; here every gray sample has its own.

Poisson noise follows the reference (quantize to 8 bits, λ = img · 2^⌈log2(#levels)⌉), with
the level count from a fixed 256-bin histogram on the device instead of ``torch.unique`` (no
host sync), and a per-sample generator seeded from the record, so a sample's noise never
depends on the rest of the batch. On CPU the draws come from alias tables of the 256
possible rates (:mod:`degradations.poisson`), on CUDA from ``torch.poisson``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .algorithms import batched
from .canvas import Canvas
from .parallel import for_each_sample
from .poisson import poisson_of_levels

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def add_noise(canvas: Canvas, params: Sequence[dict[str, Any] | None]) -> Canvas:
    """Add each sample's noise (``params[b]`` from :func:`sampling.draw_noise`) and clip to [0, 1].

    ``None`` leaves a sample untouched (not even clipped).
    """
    x = canvas.data
    device = x.device
    c = x.shape[1]
    gaussian = [i for i, p in enumerate(params) if p is not None and p["type"] == "gaussian"]
    poisson = [i for i, p in enumerate(params) if p is not None and p["type"] == "poisson"]
    everyone = len(gaussian) + len(poisson) == len(params)
    # samples without noise keep their values (not even clipped); pixels outside each
    # sample's region are never read, so with every sample noised they stay unset
    out = torch.empty_like(x) if everyone else x.clone()

    def field(p: dict[str, Any], img: torch.Tensor) -> torch.Tensor:
        """The noise for one sample's valid region ``img`` (C, h, w); gray fields are (1, h, w)."""
        gen = _generator(p["seed"], device)
        if p["type"] == "gaussian":
            shape = (1 if p["gray"] else c, *img.shape[-2:])
            return torch.randn(shape, generator=gen, device=device) * (float(p["sigma"]) / 255.0)
        img = img.float()
        if p["gray"]:
            img = sum(wt * img[k] for k, wt in enumerate(_GRAY_WEIGHTS)).unsqueeze(0)
        return _poisson_noise(img, gen) * float(p["scale"])

    def add(i: int) -> None:
        hh, ww = canvas.sizes[i]
        image = x[i, :, :hh, :ww]
        region = out[i, :, :hh, :ww]
        torch.add(image, field(params[i], image).to(x.dtype), out=region).clamp_(0, 1)

    work = poisson + gaussian  # slowest first, for balance
    if batched(device):  # CUDA kernels are asynchronous already; host threads would only contend
        for i in work:
            add(i)
    else:
        for_each_sample(add, work)
    return canvas.with_data(out)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def _poisson_noise(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Poisson(img·vals)/vals − img on the 8-bit-quantized image, vals from its level count."""
    levels = torch.mul(img, 255).round_().clamp_(0, 255)
    q = levels / 255
    if not batched(img.device):  # exact alias-table draws (see poisson.py)
        index = levels.to(torch.int32)
        count = int((torch.bincount(index.flatten(), minlength=256) > 0).sum())
        vals = 2 ** math.ceil(math.log2(count))
        return poisson_of_levels(index, vals, gen) / vals - q
    # scatter_add into 256 fixed bins: unlike bincount (which needs max(input) on the host)
    # this never synchronizes with a CUDA device
    flat = levels.to(torch.int64).flatten()
    hist = torch.zeros(256, dtype=torch.int64, device=img.device).scatter_add_(0, flat, torch.ones_like(flat))
    count = (hist > 0).sum()
    vals = torch.exp2(torch.ceil(torch.log2(count.to(torch.float32))))
    return torch.poisson(q * vals, generator=gen) / vals - q
