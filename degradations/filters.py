"""Spatial filters of the chain: per-sample blur kernels and unsharp masking (USM).

Blur is a depthwise correlation with reflect borders, like BasicSR's ``filter2D`` and
kornia's ``filter2d(border_type='reflect', behaviour='corr')``, of each sample with its
own kernel (zero-padded to 21×21 like the reference's).

On CPU every image is convolved on its own, cut into horizontal strips that become the
groups of one depthwise convolution (enough groups for the fast path, and no canvas
padding: after a per-sample resize each image has its own size), and each kernel is cut
to its numerical extent: the outer rings it drops hold < 2^-26 of its mass, so results
move by less than float32 rounding while a σ = 0.5 Gaussian costs 49 taps instead of 441.
On CUDA, where launches are the cost, each support class (11, 15 or the stage's support,
chosen from the kernel's nominal size) is one grouped convolution over a shared canvas,
in chunks of similar area. Either way a sample's result never depends on its batch.

USM blurs with a separable 51-tap Gaussian: per image, two passes (rows, then columns) of
small matrix products, each multiplying tiles of 80 output columns (plus 50 border columns,
reflect-padded) by one Toeplitz matrix of the taps. That is ≈20× fewer MACs than the
reference's full 2-D filter, and on CPU a GEMM does far more MACs per second than a
depthwise convolution (timings: ``bench/degradations.py``). The formula is the reference's; kornia's ``unsharp_mask`` computes a different
one.
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .algorithms import batched
from .canvas import Canvas, _border_index
from .config import MAX_KERNEL_SIZE
from .kernels import build_kernels, gaussian_kernel1d

#: Output rows per strip in ``_depthwise``. Set from each sample's own height only, so a
#: sample is cut the same way whatever batch it is in.
_STRIP_ROWS = 64


def _depthwise(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Valid correlation of (B, C, H, W) with one (kh, kw) kernel per sample.

    Tall images are cut into horizontal strips of ``_STRIP_ROWS`` output rows (plus the
    kernel's halo) that become extra groups of the one grouped convolution: a depthwise
    convolution with few groups (one image: 3) runs on a slower path per pixel than one
    with dozens. Every output pixel still sums the same products in the same order.
    """
    b, c, h, w = x.shape
    kh, kw = kernels.shape[-2:]
    h_out, w_out = h - kh + 1, w - kw + 1
    rows = _STRIP_ROWS if h_out >= 2 * _STRIP_ROWS else h_out
    strips = -(-h_out // rows)
    if strips > 1:
        x = F.pad(x, (0, 0, 0, strips * rows - h_out))  # rows below the image are cut off again
        x = x.unfold(2, rows + kh - 1, rows).permute(0, 2, 1, 4, 3)  # (b, strips, c, rows+kh-1, w)
    groups = b * strips * c
    weight = kernels.to(x.dtype).repeat_interleave(strips * c, dim=0).view(groups, 1, kh, kw)
    out = F.conv2d(x.reshape(1, groups, rows + kh - 1, w), weight, groups=groups)
    if strips == 1:
        return out.view(b, c, h_out, w_out)
    out = out.view(b, strips, c, rows, w_out).permute(0, 2, 1, 3, 4)
    return out.reshape(b, c, strips * rows, w_out)[:, :, :h_out]


def blur(canvas: Canvas, params: Sequence[dict[str, Any] | None]) -> Canvas:
    """Blur sample b with the kernel described by ``params[b]`` (``None`` leaves it as is)."""
    index = [i for i, p in enumerate(params) if p is not None]
    if not index:
        return canvas
    kernels = build_kernels(params, device=canvas.data.device)
    # every pixel a blurred sample's region leaves out is never read again, so it may stay unset
    out = torch.empty_like(canvas.data) if len(index) == len(params) else canvas.data.clone()
    if batched(canvas.data.device):
        _blur_batched(canvas, params, kernels, index, out)
    else:
        _blur_each_image(canvas, kernels, index, out)
    return canvas.with_data(out)


def _centre(kernel: torch.Tensor, half: int) -> torch.Tensor:
    """The central (2·half + 1)² window of a square odd kernel."""
    full = kernel.shape[-1] // 2
    return kernel[..., full - half : full + half + 1, full - half : full + half + 1]


def _support_kernel(kernel: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """The centre of a padded (21, 21) kernel that the sample's support class needs."""
    return _centre(kernel, _conv_support(p) // 2)


#: A CPU blur skips the kernel's outer rings while together they hold at most this much
#: of its absolute mass: every output moves by less than 2^-26 (an image is in [0, 1]),
#: under float32's own rounding of the sum. Small-σ Gaussians (σ ≤ 1.5 in the second
#: stage) are zero-padded to 21×21 but numerically fit 7×7–15×15.
_NEGLIGIBLE_MASS = 2.0**-26


def _effective_half(kernel: torch.Tensor) -> int:
    """The smallest half-width r whose centred window of a square odd kernel leaves out at
    most ``_NEGLIGIBLE_MASS`` of its absolute mass (computed serially from the kernel alone)."""
    full = kernel.shape[-1] // 2
    axis = (torch.arange(kernel.shape[-1], device=kernel.device) - full).abs()
    ring = torch.maximum(axis.view(-1, 1), axis.view(1, -1)).flatten()  # Chebyshev distance
    per_ring = torch.zeros(full + 1, dtype=torch.float64, device=kernel.device)
    per_ring.index_add_(0, ring, kernel.abs().to(torch.float64).flatten())
    beyond = per_ring.flip(0).cumsum(0).flip(0).tolist()  # beyond[r]: mass at distance ≥ r
    return next((r for r in range(full) if beyond[r + 1] <= _NEGLIGIBLE_MASS), full)


def _blur_each_image(canvas: Canvas, kernels: torch.Tensor, index: list[int], out: torch.Tensor) -> None:
    """CPU: one strip-split depthwise convolution per image, on its own valid region, with
    the kernel cut to its numerical extent (no grouping to keep, so every size is its own;
    taps outside the nominal size are zero, so the cut never exceeds it)."""
    for i in index:
        k = _centre(kernels[i], _effective_half(kernels[i]))
        h, w = canvas.sizes[i]
        out[i, :, :h, :w] = _correlate_image(canvas.data[i, :, :h, :w], k)


def _correlate_image(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reflect-bordered correlation of one image (C, h, w) with a square odd kernel.

    One row gather builds every strip of ``_STRIP_ROWS`` output rows with its halo (reflect
    rows included) from the image, strided or not; reflect-padding its columns then gives
    (C, strips, rows + k − 1, w + k − 1) in one contiguous block: the grouped convolution
    reads it without another copy and its output is already the (C, h, w) image.
    """
    c, h, w = image.shape
    size = kernel.shape[-1]
    half = size // 2
    rows = _STRIP_ROWS if h >= 2 * _STRIP_ROWS else h
    strips = -(-h // rows)
    starts = torch.arange(strips, device=image.device).view(-1, 1) * rows
    src = (starts + torch.arange(rows + size - 1, device=image.device).view(1, -1)).view(-1)
    # rows below the image (last strip) are reflected too; their outputs are cut off
    halo = image.index_select(1, _reflect_index(h, half, int(src.max()) + 1, image.device)[src])
    if w > half:
        halo = F.pad(halo, (half, half), mode="reflect")
    else:  # reflect more than once across a narrow image
        halo = halo.index_select(2, _reflect_index(w, half, w + 2 * half, image.device))
    groups = c * strips
    x = halo.view(1, groups, rows + size - 1, w + 2 * half)
    weight = kernel.to(image.dtype).expand(groups, 1, size, size)
    return F.conv2d(x, weight, groups=groups).view(c, strips * rows, w)[:, :h]


def _reflect_index(n: int, pad: int, length: int, device: torch.device) -> torch.Tensor:
    """Source index of positions −pad … length − pad − 1 along an axis of ``n`` values (reflect)."""
    return _border_index([(n, n)], 0, n, pad, length - n - 2 * pad, "reflect", device)[0]


def _blur_batched(canvas: Canvas, params, kernels: torch.Tensor, index: list[int], out: torch.Tensor) -> None:
    """CUDA: one grouped convolution per support class and chunk of similar area."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in index:
        groups[_conv_support(params[i])].append(i)
    chunks = [(size, chunk) for size, members in sorted(groups.items()) for chunk in _similar_area_chunks(members, canvas.sizes)]
    for size, members in chunks:
        half = size // 2
        k = torch.stack([_support_kernel(kernels[i], params[i]) for i in members])
        sub = canvas if len(members) == len(params) else canvas.subset(members)
        if sub.is_uniform and min(sub.data.shape[-2:]) > half:
            padded = F.pad(sub.data, (half, half, half, half), mode="reflect")  # same values, faster
        else:
            padded = sub.extended(half, half, "reflect")
        res = _depthwise(padded, k)
        h, w = res.shape[-2:]
        out[torch.as_tensor(members, device=out.device), :, :h, :w] = res


#: Kernels are convolved at the smallest of these sizes that holds them (never above the
#: stage's support): a 7×7 kernel costs a fifth of a 21×21 one, while a few classes keep
#: enough samples per grouped call (per-call overhead dominates small depthwise convs).
_SUPPORT_CLASSES = (11, 15)


def _conv_support(p: dict[str, Any]) -> int:
    support = int(p.get("support", MAX_KERNEL_SIZE))
    size = int(p.get("size", support))
    return min([c for c in _SUPPORT_CLASSES if c >= size] + [support])


def _similar_area_chunks(index: list[int], sizes: list[tuple[int, int]], ratio: float = 1.5) -> list[list[int]]:
    """Split ``index`` into runs whose largest area is at most ``ratio`` × the smallest.

    A shared canvas costs the largest member's area for every member; after a per-sample
    resize, areas differ up to 100×, so mixing them would waste most of the work.
    """
    order = sorted(index, key=lambda i: sizes[i][0] * sizes[i][1])
    chunks: list[list[int]] = []
    for i in order:
        area = sizes[i][0] * sizes[i][1]
        if chunks and area <= ratio * sizes[chunks[-1][0]][0] * sizes[chunks[-1][0]][1]:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


@lru_cache(maxsize=32)
def _reflect_band_matrix(n: int, radius: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix M with (M @ v) = 1-D Gaussian correlation of v under reflect borders."""
    taps = gaussian_kernel1d(radius, sigma).to(torch.float64)
    half = radius // 2
    out = torch.arange(n).view(-1, 1)
    src = out + torch.arange(radius).view(1, -1) - half  # (n, radius) source positions
    period = max(2 * (n - 1), 1)
    src = torch.remainder(src, period)
    src = torch.where(src < n, src, period - src) if n > 1 else torch.zeros_like(src)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((out.expand_as(src), src), taps.expand_as(src).clone(), accumulate=True)
    return m.to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _band_tile_matrix(tile: int, radius: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(tile + radius − 1, tile) Toeplitz matrix: column j holds the taps at rows j … j + radius − 1."""
    taps = gaussian_kernel1d(radius, sigma).to(torch.float64)
    rows = torch.arange(tile).view(1, -1) + torch.arange(radius).view(-1, 1)  # (radius, tile)
    m = torch.zeros(tile + radius - 1, tile, dtype=torch.float64)
    m[rows, torch.arange(tile).expand_as(rows)] = taps.view(-1, 1).expand_as(rows)
    return m.to(device=device, dtype=dtype)


#: Output columns per GEMM tile. Each tile reads tile + 50 inputs, so a pass costs
#: (tile + 50) MACs per pixel instead of the full width; smaller tiles pay more border,
#: larger ones fall out of cache (80 was the best of the sizes tried in bench/degradations.py).
_USM_TILE = 80


def _blur_last_axis(x2d: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Gaussian correlation of every row of (R, n) along n with reflect borders."""
    rows, n = x2d.shape
    half = radius // 2
    tile = _USM_TILE
    if n <= half or n < 2 * tile:  # reflect padding needs n > half; tiny rows: one dense GEMM
        return torch.matmul(x2d, _reflect_band_matrix(n, radius, float(sigma), x2d.device, x2d.dtype).t())
    padded = F.pad(x2d.unsqueeze(0), (half, half), mode="reflect").squeeze(0)  # (R, n + radius − 1)
    band = _band_tile_matrix(tile, radius, float(sigma), x2d.device, x2d.dtype)
    out = torch.empty_like(x2d)
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        width = stop - start
        src = padded[:, start : stop + radius - 1]
        out[:, start:stop] = torch.matmul(src, band[: width + radius - 1, :width])
    return out


def gaussian_blur_separable(x: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Reflect-bordered separable Gaussian blur of a uniform batch (B, C, H, W).

    Each pass multiplies tiles of ``_USM_TILE`` output columns by one small Toeplitz
    matrix (the border is folded in by reflect padding first): (tile + radius − 1) MACs
    per pixel instead of the image width of a full banded matrix.
    GEMMs run one image at a time (a batched-broadcast matmul is much slower on CPU), so a
    result never depends on the batch around it.
    """
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        rows = _blur_last_axis(x[i].reshape(c * h, w), radius, sigma).view(c, h, w)
        cols = _blur_last_axis(rows.transpose(1, 2).reshape(c * w, h), radius, sigma).view(c, w, h)
        out[i] = cols.transpose(1, 2)
    return out


def usm_sharpen(img: torch.Tensor, radius: int = 51, sigma: float = 8.0, weight: float = 0.5, threshold: float = 10.0) -> torch.Tensor:
    """Real-ESRGAN's unsharp mask on a float batch in [0, 1].

    residual = img − blur(img); mask = |residual|·255 > threshold; soft = blur(mask);
    out = soft · clip(img + weight·residual) + (1 − soft) · img.
    One image at a time, so every temporary stays in cache.
    """
    out = torch.empty_like(img)
    for i in range(img.shape[0]):
        image = img[i : i + 1]
        residual = image - gaussian_blur_separable(image, radius, sigma)
        mask = (residual.abs() * 255 > threshold).to(img.dtype)
        soft = gaussian_blur_separable(mask, radius, sigma)
        sharp = (image + weight * residual).clamp_(0, 1)
        out[i] = (soft * sharp + (1 - soft) * image)[0]
    return out
