"""Exact Poisson draws for 8-bit images on CPU, by Walker's alias method.

The reference's Poisson noise draws Poisson(λ) per pixel with λ = level · vals / 255, where
the level is the pixel's 8-bit value and vals a power of two from 1 to 256. So an image
needs at most 256 distinct distributions, and each can be tabulated once: for level ℓ,
K = vals + 10·√vals + 25 cells (everything beyond holds < 1e-20 of the mass) with a
threshold and an alias each. A draw is then one uniform u: cell i = ⌊u·K⌋, and the result
is i when the fraction u·K − i is below the cell's threshold, else the cell's alias.

That is exact (up to float64 rounding of the tables), consumes exactly one random number
per pixel, and on CPU beats ``torch.poisson`` (whose rejection sampler spends its time on
logs and lgamma per value), on chunks small enough to stay in cache.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

#: Pixels per step: the uniforms, indices and table rows in flight stay in L2.
_CHUNK = 16384


@lru_cache(maxsize=16)
def alias_tables(vals: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(threshold, alias, K): flat (256·K,) tables of Poisson(ℓ·vals/255) for ℓ = 0 … 255.

    Built with Vose's algorithm in float64; the pmf beyond K−1 (< 1e-20) is folded into
    the last cell. Cached: vals takes at most nine values.
    """
    if vals < 1 or vals > 256:
        raise ValueError(f"vals must be in [1, 256], got {vals}")
    cells = int(vals + 10 * math.sqrt(vals) + 25)
    lam = torch.arange(256, dtype=torch.float64) * vals / 255
    k = torch.arange(cells, dtype=torch.float64)
    logp = k * torch.log(lam.clamp(min=1e-300)).unsqueeze(1) - lam.unsqueeze(1) - torch.lgamma(k + 1)
    pmf = torch.exp(logp)
    pmf[0] = 0.0
    pmf[0, 0] = 1.0  # λ = 0: always 0
    pmf[:, -1] += (1.0 - pmf.sum(dim=1)).clamp(min=0.0)
    pmf /= pmf.sum(dim=1, keepdim=True)
    threshold = torch.ones(256, cells, dtype=torch.float64)
    alias = torch.arange(cells, dtype=torch.int32).repeat(256, 1)
    for level, row in enumerate(pmf.tolist()):
        scaled = [p * cells for p in row]
        small = [i for i, s in enumerate(scaled) if s < 1.0]
        large = [i for i, s in enumerate(scaled) if s >= 1.0]
        row_threshold = [1.0] * cells
        row_alias = list(range(cells))
        while small and large:
            lo, hi = small.pop(), large.pop()
            row_threshold[lo] = scaled[lo]
            row_alias[lo] = hi
            scaled[hi] += scaled[lo] - 1.0
            (small if scaled[hi] < 1.0 else large).append(hi)
        threshold[level] = torch.tensor(row_threshold, dtype=torch.float64)
        alias[level] = torch.tensor(row_alias, dtype=torch.int32)
    return threshold.flatten(), alias.flatten(), cells


def poisson_of_levels(levels: torch.Tensor, vals: int, generator: torch.Generator) -> torch.Tensor:
    """Poisson(levels · vals / 255) per element, as float32 counts of ``levels``' shape.

    ``levels``: integral values 0 … 255 (any dtype) on the CPU. Draws ``levels.numel()``
    float64 uniforms from ``generator``, so the generator's state afterwards does not
    depend on the values drawn.
    """
    uniform = torch.rand(levels.numel(), generator=generator, dtype=torch.float64)
    return inverse_alias(levels, uniform, vals)


def inverse_alias(levels: torch.Tensor, uniform: torch.Tensor, vals: int) -> torch.Tensor:
    """The alias-method transform of uniforms in [0, 1) (flat, one per element of
    ``levels``) into Poisson(levels · vals / 255) counts; ``uniform`` is overwritten."""
    threshold, alias, cells = alias_tables(int(vals))
    n = levels.numel()
    base = levels.reshape(-1).to(torch.int32) * cells  # int32 indices gather faster
    out = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        position = uniform[start:stop].mul_(cells)
        cell = position.to(torch.int32)
        fraction = position.sub_(cell)
        flat = base[start:stop].add_(cell)
        keep = fraction < threshold.index_select(0, flat)
        out[start:stop] = torch.where(keep, cell, alias.index_select(0, flat))
    return out.view(levels.shape)
