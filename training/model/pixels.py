"""One pixel path: how an image file becomes the generator's input, and how its output becomes 8 bits.

Every command that reads an image file (``upscale``, ``eval``; ``degrade`` and ``synth`` through the
same decoder) reads it here, through the pipeline's :func:`~pairforge.pipeline.decode.decode_image`,
so one file gives one array everywhere: alpha composited over white, 16-bit scaled by its full range
(not clipped), palette/CMYK/gray made RGB, EXIF rotation applied, corrupt data refused. Before this
module, ``upscale`` read with PIL's ``convert("RGB")`` and ``eval`` with the decoder, and the same
transparent pixel was black in one and white in the other.

The conventions the trained generator depends on live here once:

* :func:`to_float` — HWC uint8 → (3, H, W) float32 in [0, 1] (``/ 255``; defined beside the decoder,
  since ``PairDataset`` in the pipeline gives the same tensors);
* :func:`bicubic_input` — LR → LR↑, the generator's input, exactly as training computes it
  (torch bicubic, a = −0.75, ``align_corners=False``, float32 on the CPU, clamped to [0, 1]); the
  CPU is part of the definition: a GPU's bicubic kernel can differ in the last bit;
* :func:`to_uint8` — float in [0, 1] → uint8 with ONE rounding rule, round half to even
  (``torch.round``). Why that one: the datasets' LR images are quantised so
  (:mod:`pairforge.degradations.chain`), and the metrics quantise so
  (:func:`pairforge.training.model.metrics.quantize`); an SR written with any other rule would score
  differently from the same SR scored in memory. (``+ 0.5`` then truncate differs only on exact
  halves, k + ½ of 1/255, which is exactly where two writers must not disagree.)
* :func:`export_scale` — the SR scale an export records, with one failure message.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.errors import UsageError
from pairforge.pipeline.decode import DEFAULT_MAX_PIXELS, SkipInput, decode_image, to_float
from pairforge.pipeline.sources import IMAGE_EXTS, is_image_name

__all__ = ["IMAGE_EXTS", "is_image_name", "UnreadableImage", "decode_bytes", "read_image", "to_float",
           "to_uint8", "bicubic_input", "ExportError", "export_scale", "EXPORT_META"]

#: the file that makes a folder a generator export (written by the trainer's export)
EXPORT_META = "pairforge_generator.json"


class UnreadableImage(UsageError, ValueError):
    """An image file the decoder refuses (corrupt, not an image, too large …) or that cannot be
    read at all; the message is one line naming the file and the decoder's reason."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot read {name}: {reason}")
        self.name = name
        self.reason = reason


def decode_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The HWC uint8 RGB pixels of an encoded image, or :class:`UnreadableImage` naming ``name``."""
    try:
        return decode_image(data, max_pixels)[0]
    except SkipInput as exc:
        raise UnreadableImage(name, str(exc)) from None


def read_image(path: str | PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as HWC uint8 RGB, decoded as ``synth`` decodes its sources;
    :class:`UnreadableImage` (one line) when the file cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(str(path), exc.strerror or type(exc).__name__) from None
    return decode_bytes(data, str(path), max_pixels)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] → HWC uint8: clamped, ×255, rounded half to even
    (the one rounding rule; see the module docstring for why)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"to_uint8 takes one image, not a batch of {x.shape[0]}")
        x = x[0]
    q = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return q.permute(1, 2, 0).cpu().numpy()


def bicubic_input(lr: torch.Tensor, scale: int | None = None, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """LR (3, h, w) or (N, 3, h, w) in [0, 1] → LR↑ at ``scale`` × (or exactly ``size``), the
    generator's input: torch bicubic (a = −0.75, ``align_corners=False``), float32 on the CPU,
    clamped to [0, 1]. Training and inference both call this, so their inputs are bit-identical.
    (Not MATLAB's antialiased ``imresize``: papers' MATLAB bicubic rows differ slightly.)"""
    if (scale is None) == (size is None):
        raise ValueError("bicubic_input takes a scale or a size, not both")
    x = lr.detach().to("cpu", torch.float32)
    batched = x.dim() == 4
    x = x if batched else x[None]
    if size is None:
        size = (x.shape[-2] * scale, x.shape[-1] * scale)
    up = F.interpolate(x, size=tuple(int(s) for s in size), mode="bicubic", align_corners=False).clamp(0, 1)
    return up if batched else up[0]


class ExportError(UsageError, ValueError):
    """A folder that is not a usable generator export (exit 2 in every command)."""


def export_scale(export_dir: str | PathLike) -> int | None:
    """The SR scale an export records (``scale`` in pairforge_generator.json), None when it records
    none; :class:`ExportError` (one line, the same in every command) when the folder is no export."""
    meta_path = Path(export_dir) / EXPORT_META
    hint = "use RUN/export of `pairforge train`"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{export_dir} is not a generator export (no {EXPORT_META}; {hint})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{export_dir} is not a generator export ({EXPORT_META} unreadable: "
                          f"{exc}; {hint})") from None
    scale = meta.get("scale") if isinstance(meta, dict) else None
    if scale is None:
        return None
    try:
        value = int(scale)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or value != scale:
        raise ExportError(f"{export_dir}: {EXPORT_META} records scale {scale!r}, not a whole number ≥ 1")
    return value
