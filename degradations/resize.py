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


def _source_index(out_len: int, in_len: int, scale: float, device: torch.device):
    """PyTorch's align_corners=False mapping: src = (dst + ½)·scale − ½, clamped at 0."""
    dst = torch.arange(out_len, device=device, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().to(torch.int64).clamp(max=in_len - 1)
    i1 = (i0 + 1).clamp(max=in_len - 1)
    w1 = (src - i0).to(torch.float32)
    return i0, i1, w1


def _linear(x: torch.Tensor, size: tuple[int, int], factor: float | None) -> torch.Tensor:
    """Bilinear resize (align_corners=False, no antialias) as two gather-and-lerp passes.

    ``F.interpolate(mode="bilinear")`` on CPU rounds differently with 1 and 2 threads (seen:
    1.8e-7), and one flipped 8-bit level changes every later Poisson draw of the sample.
    Elementwise gathers round the same whatever the thread count.
    """
    h, w = x.shape[-2:]
    sh = 1.0 / factor if factor is not None else h / size[0]
    sw = 1.0 / factor if factor is not None else w / size[1]
    r0, r1, rw = _source_index(size[0], h, sh, x.device)
    c0, c1, cw = _source_index(size[1], w, sw, x.device)
    rw, cw = rw.to(x.dtype), cw.to(x.dtype)
    cols = torch.lerp(x.index_select(-1, c0), x.index_select(-1, c1), cw)
    return torch.lerp(cols.index_select(-2, r0), cols.index_select(-2, r1), rw.view(-1, 1))


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
        groups[(canvas.sizes[i], tuple(p["size"]), p["mode"], factor)].append(i)
        out_sizes.append((int(p["size"][0]), int(p["size"][1])))
    if len(groups) == 1:
        (in_size, size, mode, factor), index = next(iter(groups.items()))
        x = canvas.data[:, :, : in_size[0], : in_size[1]]
        res = _interpolate(x, size, mode, factor)
        assert tuple(res.shape[-2:]) == size, (res.shape, size)
        return Canvas(res, out_sizes)
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
