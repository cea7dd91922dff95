"""Turn the bytes of one source file into an RGB uint8 image, or a reason to skip it.

Real photo collections contain everything: truncated uploads, HTML error pages saved as .jpg,
16-bit scans, palette GIFs, CMYK print files, transparent PNGs, phone photos that are only
upright through their EXIF orientation, thumbnails and decompression bombs.  One bad file must
never kill a shard, so :func:`decode_image` either returns a normalised ``HxWx3 uint8`` array
or raises :class:`SkipInput` with a short machine-readable reason that ends up in the shard's
stats file.  Conversions (documented in docs/pipeline.md):

* EXIF orientation is applied (the pixels are stored upright).
* 16-bit / 32-bit integer images are scaled to 8 bits by their full range (not clipped).
* palette, 1-bit, grayscale and CMYK images become RGB.
* alpha is composited over white (transparent pixels carry arbitrary colour otherwise).
* the first frame of an animation is used.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

#: default pixel limit: ~100 megapixels (a 12k x 8k image); beyond this we skip, not decode
DEFAULT_MAX_PIXELS = 100_000_000

# truncated files must fail loudly, never decode as half-grey images
ImageFile.LOAD_TRUNCATED_IMAGES = False


class SkipInput(Exception):
    """An input that cannot (or should not) become training data; ``reason`` is a short slug."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth integer array to uint8 using the dtype's range."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0):
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if arr.dtype.kind == "f":
        hi = 1.0 if float(np.nanmax(arr, initial=0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise SkipInput("unsupported_mode", f"dtype {arr.dtype}")


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA (uint8) over white."""
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode ``data`` to ``(HxWx3 uint8, info)``; raise :class:`SkipInput` when unusable.

    ``info`` records what was done (original mode/size, conversions) for the sample's JSON.
    """
    if not data:
        raise SkipInput("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SkipInput("too_large", str(exc)[:120]) from None
    except Image.UnidentifiedImageError:
        raise SkipInput("not_an_image") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash
        raise SkipInput("corrupt", f"{type(exc).__name__}: {exc}"[:160]) from None

    w, h = im.size
    if w * h > max_pixels:
        raise SkipInput("too_large", f"{w}x{h} > {max_pixels} pixels")
    info: dict = {"format": im.format, "mode": im.mode, "size": [w, h], "conversions": []}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                info["conversions"].append("first_frame")
            orientation = im.getexif().get(0x0112, 1)
            if orientation not in (0, 1):  # store pixels upright, as a viewer would show them
                im = ImageOps.exif_transpose(im)
                info["conversions"].append(f"exif_orientation_{orientation}")
            arr = _pil_to_rgb(im, info)
    except SkipInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SkipInput("too_large", str(exc)[:120]) from None
    except MemoryError:
        raise SkipInput("too_large", "out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - truncated streams raise OSError/SyntaxError/...
        raise SkipInput("corrupt", f"{type(exc).__name__}: {exc}"[:160]) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SkipInput("unsupported_mode", f"shape {arr.shape}")
    return np.ascontiguousarray(arr), info


def _pil_to_rgb(im: Image.Image, info: dict) -> np.ndarray:
    mode = im.mode
    conv = info["conversions"]
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        conv.append(f"{mode}_to_8bit")
        g = _to_uint8(np.asarray(arr))
        conv.append("gray_to_rgb")
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("L", "1"):
        conv.append("gray_to_rgb")
        return np.asarray(im.convert("RGB"))
    if mode in ("LA", "La"):
        conv.append("alpha_over_white")
        conv.append("gray_to_rgb")
        return _flatten_alpha(np.asarray(im.convert("RGBA")))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        conv.append("palette_to_rgb")
        if has_alpha:
            conv.append("alpha_over_white")
            return _flatten_alpha(np.asarray(im.convert("RGBA")))
        return np.asarray(im.convert("RGB"))
    if mode in ("RGBA", "RGBa"):
        conv.append("alpha_over_white")
        return _flatten_alpha(np.asarray(im.convert("RGBA")))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        conv.append(f"{mode.lower()}_to_rgb")
        return np.asarray(im.convert("RGB"))
    try:
        conv.append(f"{mode}_to_rgb")
        return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001
        raise SkipInput("unsupported_mode", f"{mode}: {exc}"[:160]) from None
