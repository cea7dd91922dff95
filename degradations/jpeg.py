"""JPEG compression with two backends.

``real``: the actual libjpeg codec (Pillow) on CPU — 4:2:0 chroma subsampling, integer
quality, input quantized to 8 bits first, exactly what a camera or a website does. On CUDA
the codec is torchvision's nvJPEG when available (batched per quality; note nvJPEG encodes
4:4:4), else the images make a round trip through Pillow on the host. The codec used is
returned so the record can say which one produced the pixels.

``differentiable``: kornia's differentiable JPEG (libjpeg-style tables, replicate padding),
batched with one quality per sample. The canvas is replicate-extended first, so padding
seen by each sample is its own edge, as if it were alone.
"""
from __future__ import annotations

import io
from collections import defaultdict
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
    if canvas.data.device.type == "cuda" and _nvjpeg_available():
        return _jpeg_nvjpeg(canvas, qualities), "nvjpeg"
    return _jpeg_pillow(canvas, qualities), "libjpeg"


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def pillow_jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode an HWC uint8 RGB array with libjpeg at ``quality`` and decode it again."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.array(decoded.convert("RGB"))  # writable, so torch can wrap it


def _jpeg_pillow(canvas: Canvas, qualities: Sequence[int]) -> Canvas:
    """libjpeg round trip per sample, converting only each sample's valid region (not the
    padded canvas) to and from 8 bits, on the sample thread pool."""
    src = canvas.data
    out = torch.zeros_like(src, device="cpu")
    host = src.cpu()  # the tensor itself when it is already on the CPU

    def roundtrip(b: int) -> None:
        h, w = canvas.sizes[b]
        pixels = _to_uint8(host[b, :, :h, :w]).permute(1, 2, 0).contiguous().numpy()
        decoded = torch.from_numpy(pillow_jpeg_roundtrip(pixels, qualities[b])).permute(2, 0, 1)
        torch.div(decoded.to(out.dtype), 255, out=out[b, :, :h, :w])

    for_each_sample(roundtrip, range(len(qualities)))
    return canvas.with_data(out.to(src.device))


def _nvjpeg_available() -> bool:
    try:
        from torchvision.io import decode_jpeg, encode_jpeg  # noqa: F401
    except Exception:  # pragma: no cover - torchvision without image ops
        return False
    return True


def _jpeg_nvjpeg(canvas: Canvas, qualities: Sequence[int]) -> Canvas:  # pragma: no cover - needs CUDA
    from torchvision.io import decode_jpeg, encode_jpeg

    x = _to_uint8(canvas.data)
    out = torch.zeros_like(x)
    by_quality: dict[int, list[int]] = defaultdict(list)
    for b, q in enumerate(qualities):
        by_quality[int(q)].append(b)
    for q, index in by_quality.items():
        crops = [x[b, :, : canvas.sizes[b][0], : canvas.sizes[b][1]].contiguous() for b in index]
        encoded = encode_jpeg(crops, quality=q)
        decoded = decode_jpeg([e.cpu() for e in encoded], device=x.device)
        for b, img in zip(index, decoded):
            out[b, :, : img.shape[-2], : img.shape[-1]] = img
    return canvas.with_data(out.to(canvas.data.dtype) / 255)


def _jpeg_differentiable(canvas: Canvas, qualities: Sequence[int]) -> Canvas:
    """kornia's codec, one call per group of samples that pad to the same 16-multiple.

    kornia pads each image to a multiple of 16 by replicating its edge, and its antialiased
    chroma resampling renormalizes at the padded border; a sample on a larger canvas would
    see a different border. Grouping by padded size keeps every sample's result exact.
    """
    from kornia.enhance import jpeg_codec_differentiable

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for b, (h, w) in enumerate(canvas.sizes):
        groups[(-(-h // 16) * 16, -(-w // 16) * 16)].append(b)
    out = canvas.data.clone()
    for (ph, pw), index in groups.items():
        sub = canvas if len(index) == len(qualities) else canvas.subset(index)
        h, w = sub.data.shape[-2:]
        x = sub.data if sub.is_uniform else sub.extended(0, 0, "replicate", ph - h, pw - w)
        q = torch.tensor([float(qualities[b]) for b in index], device=x.device, dtype=torch.float32)
        res = jpeg_codec_differentiable(x.clamp(0, 1).float(), q)[..., :h, :w].to(out.dtype)
        if len(index) == len(qualities):
            out = res
        else:
            out[torch.as_tensor(index, device=out.device), :, :h, :w] = res
    return canvas.with_data(out)
