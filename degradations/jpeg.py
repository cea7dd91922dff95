"""JPEG compression with two backends.

``real``: the actual libjpeg codec (Pillow) — 4:2:0 chroma subsampling, integer quality,
input quantized to 8 bits first, exactly what a camera or a website does. It runs on the host
for every device: on CUDA the batch makes a round trip through host memory. nvJPEG would stay
on the GPU but encodes 4:4:4 chroma, a different artifact family, and a cluster mixing CPU and
GPU workers would then write one dataset from two distributions (Real-ESRGAN, AdcSR and
OSEDiff all train on 4:2:0 artifacts). The cost of the round trip is in ``bench/``. The codec
used is returned so the record can say which one produced the pixels.

``differentiable``: kornia's differentiable JPEG (libjpeg-style tables, replicate padding),
one call per sample on its own region: kornia's batched call rounds differently with the
batch around a sample, and its padding must start at the sample's own edge.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .canvas import Canvas
from .parallel import for_each_sample


def jpeg(canvas: Canvas, qualities: Sequence[int], backend: str) -> tuple[Canvas, str]:
    """Compress sample b at ``qualities[b]``; returns the new canvas and the codec name."""
    if backend == "differentiable":
        return _jpeg_differentiable(canvas, qualities), "kornia-differentiable"
    if backend != "real":
        raise ValueError(f"unknown JPEG backend {backend!r}")
    return _jpeg_pillow(canvas, qualities), "libjpeg"


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to 8 bits, rounding to nearest (one temporary, then in place)."""
    return torch.mul(x, 255).clamp_(0, 255).round_().to(torch.uint8)


def pillow_jpeg_roundtrip(planes: np.ndarray, quality: int) -> np.ndarray:
    """Encode a (3, h, w) uint8 RGB array with libjpeg at ``quality``; decode it to (h, w, 3).

    Planar in, interleaved out, as is cheapest on each side: Pillow merges three planes
    faster than torch transposes them, and torch reads the decoded pixels strided for free.
    """
    _, h, w = planes.shape
    bands = [Image.frombuffer("L", (w, h), np.ascontiguousarray(planes[k]), "raw", "L", 0, 1) for k in range(3)]
    buf = io.BytesIO()
    Image.merge("RGB", bands).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.array(decoded.convert("RGB"))  # writable, so torch can wrap it


def _jpeg_pillow(canvas: Canvas, qualities: Sequence[int]) -> Canvas:
    """libjpeg round trip of each sample's valid region (not the padded canvas).

    When a batch is degraded on the calling thread (on CUDA, or ``apply_chain`` called directly), the codec calls run on the sample pool (Pillow releases the GIL) and
    the conversions to and from 8 bits stay on this thread, where torch spreads each over
    its threads: 26% faster on 2 cores than whole round trips on the pool. Inside a pool
    task (the CPU ``Degrader``) everything runs inline.
    """
    src = canvas.data
    host = src.cpu()  # the tensor itself when it is already on the CPU
    n = len(qualities)
    planes = [_to_uint8(host[b, :, : canvas.sizes[b][0], : canvas.sizes[b][1]]).numpy() for b in range(n)]
    decoded: list[np.ndarray] = [np.empty(0)] * n

    def roundtrip(b: int) -> None:
        decoded[b] = pillow_jpeg_roundtrip(planes[b], qualities[b])

    for_each_sample(roundtrip, range(n))
    out = torch.empty_like(host)  # pixels outside each sample's region are never read
    for b, (h, w) in enumerate(canvas.sizes):
        torch.div(torch.from_numpy(decoded[b]).permute(2, 0, 1).to(out.dtype), 255, out=out[b, :, :h, :w])
    return canvas.with_data(out.to(src.device))


def _jpeg_differentiable(canvas: Canvas, qualities: Sequence[int]) -> Canvas:
    """kornia's codec, one call per sample, on the sample's own region.

    One call per sample because kornia's batched codec rounds differently with the batch
    around a sample (its DCT products change blocking with the batch size: measured 2e-7,
    enough to flip an 8-bit level now and then), and because it pads each image to a
    multiple of 16 by replicating its edge, which must be the sample's own edge.
    """
    from kornia.enhance import jpeg_codec_differentiable

    out = torch.empty_like(canvas.data)  # pixels outside each sample's region are never read
    for b, (h, w) in enumerate(canvas.sizes):
        image = canvas.data[b : b + 1, :, :h, :w]
        q = torch.tensor([float(qualities[b])], device=image.device, dtype=torch.float32)
        out[b, :, :h, :w] = jpeg_codec_differentiable(image.clamp(0, 1).float(), q)[0].to(out.dtype)
    return canvas.with_data(out)
