"""Turn the bytes of one source file into an RGB uint8 image, or a reason to skip it.

Real photo collections contain everything: truncated uploads, HTML error pages saved as .jpg,
corrupt downloads, 16-bit scans, palette GIFs, CMYK print files, transparent PNGs, phone photos
that are only upright through their EXIF orientation, thumbnails and decompression bombs.  One
bad file must never kill a shard, so :func:`decode_image` either returns a normalised
``HxWx3 uint8`` array or raises :class:`SkipInput` with a short machine-readable reason that ends
up in the shard's stats file.  Conversions (documented in docs/pipeline.md):

* EXIF orientation is applied (the pixels are stored upright).
* 16-bit / 32-bit integer images are scaled to 8 bits by their full range (not clipped).
* palette, 1-bit, grayscale and CMYK images become RGB.
* alpha is composited over white (transparent pixels carry arbitrary colour otherwise).
* the first frame of an animation is used.

Corrupt data is an error, never a picture: libjpeg only *warns* about a damaged JPEG stream
("Corrupt JPEG data: premature end of data segment", "extraneous bytes before marker") and fills
what it could not decode with gray, and Pillow hides those warnings.  JPEGs are therefore decoded
by libjpeg-turbo through simplejpeg with ``strict=True``, which turns every libjpeg warning into
an error; with the same settings as Pillow's (accurate DCT, smooth upsampling) its pixels are
Pillow's, bit for bit.  PNGs must carry intact critical chunks (CRC) up to IEND, and a WebP file
must be as long as its RIFF header says.  The pixel limit is decided from the header, before any
pixel is allocated.
"""
from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from os import PathLike
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

if TYPE_CHECKING:
    import torch

#: default pixel limit: ~100 megapixels (a 12k x 8k image); beyond this we skip, not decode
DEFAULT_MAX_PIXELS = 100_000_000

# truncated files must fail loudly, never decode as half-grey images
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Pillow's decompression-bomb limit is a process-wide global (89.5 MP by default, below ours);
#: :func:`open_header` sets it to the caller's limit only while it parses a header, under this lock
_PIL_LIMIT_LOCK = threading.Lock()

#: EXIF orientation -> the array operation that makes the pixels upright (as Pillow's exif_transpose)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


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


def open_header(source: bytes | str | PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image opened lazily (header parsed, no pixels decoded), within ``max_pixels``.

    The size limit is decided here, from the header: an image over ``max_pixels`` raises
    :class:`SkipInput` ``too_large`` before any pixel memory exists.  Pillow's own bomb check
    would otherwise refuse images between its default 89.5 MP and our documented limit.  Pillow
    reads its limit from a module global, so it is set to ``max_pixels`` (and its bomb warning
    made an error) only for the header parse, under a lock, and restored right after: calling
    this leaves no process-wide setting changed, and concurrent decodes in threads do not race.
    Bytes, a path or a binary file are accepted (for a header-only look at local files).
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SkipInput("too_large", str(exc)[:120]) from None
    except Image.UnidentifiedImageError:
        raise SkipInput("not_an_image") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash - any parser failure is a bad file, not a crash
        raise SkipInput("corrupt", f"{type(exc).__name__}: {exc}"[:160]) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise SkipInput("too_large", f"{w}x{h} > {max_pixels} pixels")
    return im


def image_size(source: bytes | str | PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header alone, or the :class:`SkipInput` the decoder would raise there."""
    with open_header(source, max_pixels) as im:
        return im.size


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode ``data`` to ``(HxWx3 uint8, info)``; raise :class:`SkipInput` when unusable.

    ``info`` records what was done (original mode/size, conversions) for the sample's JSON.
    Damaged or truncated data raises ``corrupt`` (see the module docstring for how it is found).
    """
    if not data:
        raise SkipInput("empty_file")
    im = open_header(data, max_pixels)
    w, h = im.size
    info: dict = {"format": im.format, "mode": im.mode, "size": [w, h], "conversions": []}
    check_container(im.format, data)
    try:
        arr = _decode_pixels(im, data, info)
    except SkipInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SkipInput("too_large", str(exc)[:120]) from None
    except MemoryError:
        raise SkipInput("too_large", "out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash - truncated streams raise OSError/SyntaxError/...
        raise SkipInput("corrupt", f"{type(exc).__name__}: {exc}"[:160]) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SkipInput("unsupported_mode", f"shape {arr.shape}")
    return np.ascontiguousarray(arr), info


def _decode_pixels(im: Image.Image, data: bytes, info: dict) -> np.ndarray:
    """The upright RGB pixels of an opened image; JPEGs through the strict decoder."""
    conv = info["conversions"]
    if im.format in ("JPEG", "MPO"):
        pixels = _strict_jpeg(im, data)  # None for CMYK: Pillow converts those, after the check
    else:
        im.load()
        pixels = None
    if getattr(im, "n_frames", 1) > 1:
        conv.append("first_frame")
    orientation = im.getexif().get(0x0112, 1)
    if orientation in _UPRIGHT:  # store pixels upright, as a viewer would show them
        conv.append(f"exif_orientation_{orientation}")
    if pixels is None:
        arr = _pil_to_rgb(im, info)
    elif pixels.shape[2] == 1:
        conv.append("gray_to_rgb")  # as _pil_to_rgb names it for an "L" image
        arr = np.repeat(pixels, 3, axis=2)
    else:
        arr = pixels
    if orientation in _UPRIGHT:
        arr = _UPRIGHT[orientation](arr)
    return arr


def _strict_jpeg(im: Image.Image, data: bytes) -> np.ndarray | None:
    """The JPEG's pixels (HxWx3 RGB or HxWx1 gray) decoded by libjpeg-turbo with every warning an
    error (``corrupt``); None for a CMYK/YCCK JPEG, which is checked here and left to Pillow,
    which knows Adobe's inverted CMYK.

    RGB and grayscale JPEGs (nearly all photos) are decoded once, here, with Pillow's settings:
    the pixels are the ones Pillow would give.
    """
    colorspace = {"RGB": "RGB", "L": "GRAY"}.get(im.mode, "CMYK")
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError as exc:  # libjpeg's error or warning, e.g. "Corrupt JPEG data: ..."
        raise SkipInput("corrupt", f"JPEG: {exc}"[:160]) from None
    if colorspace == "CMYK":
        im.load()
        return None
    return arr


def check_container(fmt: str | None, data: bytes) -> None:
    """Raise ``corrupt`` for a PNG or WebP whose container shows damage or truncation.

    Pillow checks neither a PNG's image-data CRCs nor that a PNG reaches IEND, so a flipped byte
    or a lost tail can decode without a word.
    """
    if fmt == "PNG":
        _check_png(data)
    elif fmt == "WEBP":
        _check_webp(data)


def _check_png(data: bytes) -> None:
    """Every critical chunk (IHDR, PLTE, IDAT, IEND) complete and CRC-intact, image data present.

    Ancillary chunks (text, EXIF, ...) are not checked, as libpng only warns about them.
    """
    view = memoryview(data)
    pos, idat = 8, False
    while True:
        if pos + 12 > len(data):
            raise SkipInput("corrupt", f"PNG: truncated at byte {pos} (no IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise SkipInput("corrupt", f"PNG: truncated inside the {kind.decode('latin-1')} chunk at byte {pos}")
        if not kind[0] & 0x20:  # critical chunk: bit 5 of the first letter is 0 (upper case)
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if zlib.crc32(view[pos + 4:end - 4]) != crc:
                raise SkipInput("corrupt", f"PNG: CRC mismatch in the {kind.decode('latin-1')} chunk at byte {pos}")
        idat = idat or kind == b"IDAT"
        if kind == b"IEND":
            break
        pos = end
    if not idat:
        raise SkipInput("corrupt", "PNG: no image data (IDAT chunk)")


def _check_webp(data: bytes) -> None:
    """The file holds as many bytes as its RIFF header says (lossy VP8 data carries no checksum)."""
    if len(data) >= 12 and data[:4] == b"RIFF":
        (size,) = struct.unpack_from("<I", data, 4)
        if size + 8 > len(data):
            raise SkipInput("corrupt", f"WebP: truncated ({len(data)} of {size + 8} bytes)")


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
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash
        raise SkipInput("unsupported_mode", f"{mode}: {exc}"[:160]) from None


def to_float(img: np.ndarray) -> torch.Tensor:
    """HWC uint8 → (3, H, W) float32 in [0, 1] (``/ 255``; a new tensor, ``img`` is not shared):
    the one uint8 → float rule of training, ``PairDataset`` and inference."""
    import torch  # here, not at the top: decoding alone (a synth worker's listing) needs no torch

    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"to_float takes an HWC uint8 image, not {img.dtype} of shape {img.shape}")
    return torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1).float() / 255

