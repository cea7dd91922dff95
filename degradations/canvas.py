"""A batch of images of different sizes, kept on one padded tensor.

Per-sample resize factors give every sample its own size after the first resize, and the
chain only returns to one size at the final resize. Grouping by exact size would leave
sub-batches of one. Instead samples share a top-left-aligned canvas with their valid
size recorded; spatial ops read beyond a sample's edge through an explicit per-sample
border extension (reflect or replicate), so every valid pixel is computed exactly as if
the sample were alone — batching changes speed, never values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Canvas:
    """``data`` (B, C, H, W) with sample ``b`` valid in ``data[b, :, :sizes[b][0], :sizes[b][1]]``."""

    data: torch.Tensor
    sizes: list[tuple[int, int]]

    @classmethod
    def uniform(cls, data: torch.Tensor) -> "Canvas":
        return cls(data, [(data.shape[-2], data.shape[-1])] * data.shape[0])

    @classmethod
    def from_list(cls, images: Sequence[torch.Tensor]) -> "Canvas":
        """Stack (C, h, w) tensors top-left aligned on a zero canvas."""
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in images]
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        first = images[0]
        if all(s == (h, w) for s in sizes):
            return cls(torch.stack(list(images)), sizes)
        data = first.new_zeros((len(images), first.shape[0], h, w))
        for b, t in enumerate(images):
            data[b, :, : t.shape[-2], : t.shape[-1]] = t
        return cls(data, sizes)

    @property
    def is_uniform(self) -> bool:
        return all(s == (self.data.shape[-2], self.data.shape[-1]) for s in self.sizes)

    def crop(self, b: int) -> torch.Tensor:
        """Sample ``b``'s valid region (C, h, w), a view."""
        h, w = self.sizes[b]
        return self.data[b, :, :h, :w]

    def with_data(self, data: torch.Tensor) -> "Canvas":
        return Canvas(data, list(self.sizes))

    def subset(self, index: Sequence[int]) -> "Canvas":
        """Samples ``index``, on the smallest canvas that holds them."""
        sizes = [self.sizes[i] for i in index]
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        idx = torch.as_tensor(list(index), device=self.data.device)
        return Canvas(self.data.index_select(0, idx)[:, :, :h, :w], sizes)

    def extended(self, pad_h: int, pad_w: int, mode: str, extra_h: int = 0, extra_w: int = 0) -> torch.Tensor:
        """The canvas grown by (pad_h, pad_w) on every side (plus extra at bottom/right).

        Each sample is extended from its *own* valid edge with ``mode`` ('reflect' like
        ``F.pad(mode='reflect')``, or 'replicate'); everything outside a sample's valid
        region (plus padding) is filled from the same rule, so results inside are exact.
        """
        b, _, h, w = self.data.shape
        rows = _border_index(self.sizes, 0, h, pad_h, extra_h, mode, self.data.device)
        cols = _border_index(self.sizes, 1, w, pad_w, extra_w, mode, self.data.device)
        c = self.data.shape[1]
        out = torch.gather(self.data, 2, rows.view(b, 1, -1, 1).expand(b, c, rows.shape[1], w))
        return torch.gather(out, 3, cols.view(b, 1, 1, -1).expand(b, c, rows.shape[1], cols.shape[1]))


def _border_index(sizes: list[tuple[int, int]], axis: int, length: int, pad: int, extra: int, mode: str, device) -> torch.Tensor:
    """Source index per sample for positions −pad … length+pad+extra−1 along one axis."""
    pos = torch.arange(-pad, length + pad + extra, device=device, dtype=torch.int64).view(1, -1)
    n = torch.tensor([s[axis] for s in sizes], device=device, dtype=torch.int64).view(-1, 1)
    if mode == "replicate":
        return torch.minimum(pos.clamp(min=0).expand(n.shape[0], -1), n - 1)
    if mode != "reflect":
        raise ValueError(f"unknown border mode {mode!r}")
    period = (2 * (n - 1)).clamp(min=1)
    m = torch.remainder(pos, period)
    idx = torch.where(m < n, m, period - m)
    return torch.where(n == 1, torch.zeros_like(idx), idx)
