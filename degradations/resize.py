"""Per-sample resizing onto a new canvas.

Like the reference, interpolation is ``F.interpolate`` without antialiasing or clamping
(bicubic may overshoot; later steps clip). Samples that share input size, output size and
mode are resized together; others one by one, which is exact and cheap compared to blur.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .canvas import Canvas


def _linear(x: torch.Tensor, size: tuple[int, int], factor: float | None) -> torch.Tensor:
    """Bilinear resize (align_corners=False, no antialias) as two 1-D linear passes.

    Equal to ``F.interpolate(mode="bilinear")`` (same float32 source coordinates and
    weights), which on CPU rounds differently with 1 and 2 threads (seen: 1.8e-7): one
    flipped 8-bit level would change the sample's Poisson noise. The 1-D kernel
    does not, and two passes (columns, then rows of the transposed result) are cheaper
    than the gathers that used to stand in for it. Returns a (transposed) view.
    """
    b, c, h, w = x.shape

    def along_last_axis(t: torch.Tensor, length: int) -> torch.Tensor:
        if factor is not None:  # stage 1: coordinates map by 1 / factor, as with scale_factor
            return F.interpolate(t, scale_factor=factor, recompute_scale_factor=False, mode="linear", align_corners=False)
        return F.interpolate(t, size=length, mode="linear", align_corners=False)

    cols = along_last_axis(x.reshape(b, c * h, w), size[1])
    w_out = cols.shape[-1]
    rows = along_last_axis(cols.view(b, c, h, w_out).transpose(2, 3).reshape(b, c * w_out, h), size[0])
    return rows.view(b, c, w_out, -1).transpose(2, 3)


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str, factor: float | None) -> torch.Tensor:
    if mode == "copy":
        return x
    if mode == "bilinear":
        return _linear(x, size, factor)
    kwargs: dict[str, Any] = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    if factor is not None and mode != "area":
        # stage 1 of the reference resizes with scale_factor: coordinates map by 1/factor
        return F.interpolate(x, scale_factor=factor, recompute_scale_factor=False, **kwargs)
    return F.interpolate(x, size=size, **kwargs)


def resize(canvas: Canvas, params: Sequence[dict[str, Any] | None], by_factor: bool = False) -> Canvas:
    """Resize sample b to ``params[b]["size"]`` with ``params[b]["mode"]`` (``None``: keep it).

    ``by_factor`` maps coordinates by the drawn factor (reference stage 1) instead of by the
    ratio of sizes; the output size is the same either way.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    out_sizes: list[tuple[int, int]] = []
    for i, p in enumerate(params):
        if p is None:
            groups[(canvas.sizes[i], canvas.sizes[i], "copy", None)].append(i)
            out_sizes.append(canvas.sizes[i])
            continue
        factor = float(p["factor"]) if by_factor else None
        size = (int(p["size"][0]), int(p["size"][1]))
        # to its own size, every mode maps pixel centres onto themselves with weights that
        # are exactly 1 and 0 (bicubic's too): the result is the input, so copy it
        identity = size == tuple(canvas.sizes[i]) and factor in (None, 1.0)
        groups[(canvas.sizes[i], size, "copy" if identity else p["mode"], None if identity else factor)].append(i)
        out_sizes.append(size)
    if len(groups) == 1:
        (in_size, size, mode, factor), index = next(iter(groups.items()))
        x = canvas.data[:, :, : in_size[0], : in_size[1]]
        res = _interpolate(x, size, mode, factor)
        assert tuple(res.shape[-2:]) == size, (res.shape, size)
        return Canvas(res.contiguous(), out_sizes)
    h = max(s[0] for s in out_sizes)
    w = max(s[1] for s in out_sizes)
    # pixels outside each sample's new region are never read, so they are left unset
    out = canvas.data.new_empty((len(params), canvas.data.shape[1], h, w))
    for (in_size, size, mode, factor), index in groups.items():
        if len(index) == 1:  # the usual case after a per-sample resize: views, no gathers
            i = index[0]
            x = canvas.data[i : i + 1, :, : in_size[0], : in_size[1]]
            out[i, :, : size[0], : size[1]] = _interpolate(x, size, mode, factor)[0]
            continue
        idx = torch.as_tensor(index, device=out.device)
        x = canvas.data.index_select(0, idx)[:, :, : in_size[0], : in_size[1]]
        res = _interpolate(x, size, mode, factor)
        assert tuple(res.shape[-2:]) == size, (res.shape, size)
        out[idx, :, : size[0], : size[1]] = res
    return Canvas(out, out_sizes)
