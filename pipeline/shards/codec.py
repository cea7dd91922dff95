"""Encoding a sample into tar members and decoding members back: the two halves side by side.

Encoders use fixed settings so the same pixels always give the same bytes (tars are
byte-reproducible).  The decoder looks only at png/jpg/webp, json and npy (``allow_pickle=False``)
and never at anything pickle-capable: a shard is data, not code.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from pairforge.errors import WorkFailed

from .layout import IMAGE_EXTS, SAFE_EXTS


@dataclass(frozen=True)
class EncodeConfig:
    """Image encodings.  png and webp are lossless; jpg is allowed for HR only (lossy)."""

    hr_format: str = "png"
    lr_format: str = "png"
    jpg_quality: int = 95

    def __post_init__(self) -> None:
        if self.hr_format not in ("png", "webp", "jpg"):
            raise ValueError(f"hr format must be png, webp or jpg, not {self.hr_format!r}")
        if self.lr_format not in ("png", "webp"):
            raise ValueError(f"lr format must be png or webp (lossless), not {self.lr_format!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def encode_image(rgb: np.ndarray, fmt: str, jpg_quality: int = 95) -> bytes:
    """Encode an HxWx3 uint8 RGB array; deterministic for fixed settings and library versions.

    PNG uses zlib level 1 with the RLE strategy and the Paeth filter rather than the default
    level-6 adaptive filtering: on photo patches the file is barely larger and encoding, which
    shares the CPU with degradation, is several times cheaper (figures in ``bench/results/``).
    """
    import cv2

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                  cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
        ok, buf = cv2.imencode(".png", bgr, params)
    elif fmt == "webp":
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # >100 = lossless
    elif fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpg_quality)])
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    if not ok:
        raise RuntimeError(f"encoding {fmt} failed")
    return buf.tobytes()


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Decode png/jpg/webp bytes written by pairforge to HxWx3 uint8 RGB."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("undecodable image member")
    return np.ascontiguousarray(arr[..., ::-1])


def encode_sample(key: str, hr: np.ndarray, lrs: Sequence[np.ndarray], meta: dict, enc: EncodeConfig) -> dict:
    """The tar members of one sample (values already bytes)."""
    sample: dict[str, Any] = {"__key__": key, f"hr.{enc.hr_format}": encode_image(hr, enc.hr_format, enc.jpg_quality)}
    if len(lrs) == 1:
        sample[f"lr.{enc.lr_format}"] = encode_image(lrs[0], enc.lr_format)
    else:
        for k, lr in enumerate(lrs):
            sample[f"lr.{k}.{enc.lr_format}"] = encode_image(lr, enc.lr_format)
    sample["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return sample


class UnsafeMemberError(WorkFailed, ValueError):
    """A shard member that pairforge does not write (and will not decode) was found."""


def decode_sample(sample: dict, strict: bool = False) -> dict | None:
    """Decode one raw webdataset sample into ``{key, hr, lr: [...], params}``.

    Only png/jpg/webp/json/npy members are looked at; everything else (``.pyd``, ``.pickle``,
    ``.pth``, ``.mp`` …) is dropped unread, or raises :class:`UnsafeMemberError` if ``strict``.
    """
    key = sample.get("__key__")
    hr = None
    lrs: dict[int, np.ndarray] = {}
    params: dict = {}
    extra: dict[str, Any] = {}
    for field, value in sample.items():
        if field.startswith("__"):
            continue
        parts = field.lower().split(".")
        ext = parts[-1]
        if ext not in SAFE_EXTS:
            if strict:
                raise UnsafeMemberError(f"sample {key!r}: refusing member {field!r} (not png/jpg/webp/json/npy)")
            warnings.warn(f"pairforge reader: ignored member {key}.{field} (type not decoded)", stacklevel=2)
            continue
        if ext in IMAGE_EXTS:
            arr = decode_image_bytes(value)
            if parts[0] == "hr":
                hr = arr
            elif parts[0] == "lr":
                idx = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0
                lrs[idx] = arr
            else:
                extra[field] = arr
        elif ext == "json":
            params = json.loads(value)
        elif ext == "npy":
            try:
                extra[field] = np.load(io.BytesIO(value), allow_pickle=False)
            except ValueError as exc:  # object arrays need pickle: refuse them
                if strict:
                    raise UnsafeMemberError(f"sample {key!r}: {field!r} needs pickle ({exc})") from None
                warnings.warn(f"pairforge reader: ignored member {key}.{field} (requires pickle)", stacklevel=2)
    if hr is None or not lrs:
        if strict:
            raise ValueError(f"sample {key!r} lacks hr or lr images")
        warnings.warn(f"pairforge reader: sample {key!r} lacks hr or lr images; skipped", stacklevel=2)
        return None
    out = {"key": key, "hr": hr, "lr": [lrs[i] for i in sorted(lrs)], "params": params}
    if extra:
        out["extra"] = extra
    return out


