"""Counter-based randomness: every draw is a pure function of (seed, sample key, name).

Why not a ``torch.Generator`` per batch: its stream depends on how many values earlier
samples consumed, so a sample's degradation would change with batch size, batch order,
worker count or a retry. Here each named parameter of each sample has its own stream,
and noise fields are integer hashes of (sample stream, pixel coordinate), so a sample is
the same wherever and with whomever it is processed. Pixel-noise hashing uses only
integer ops, which are exact on every device.
"""
from __future__ import annotations

import hashlib
import math
import struct
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")

_MASK32 = 0xFFFFFFFF


class SampleRng:
    """Named, independent random streams for one sample.

    ``SampleRng(7, "img0001_p0").uniform("first.noise.sigma", 1, 30)`` always returns the
    same value; a different name gives an independent value.
    """

    def __init__(self, seed: int, key: str) -> None:
        if not isinstance(key, str) or "." in key:
            raise ValueError(f"sample key {key!r} must be a string without dots")
        self.seed = int(seed)
        self.key = key
        self._prefix = f"{self.seed}\x1f{key}\x1f".encode()

    def bits64(self, name: str) -> int:
        """64 uniformly random bits for ``name``."""
        digest = hashlib.blake2b(self._prefix + name.encode(), digest_size=8).digest()
        return struct.unpack("<Q", digest)[0]

    def random(self, name: str) -> float:
        """Uniform in [0, 1) with 53 bits of precision."""
        return (self.bits64(name) >> 11) * (1.0 / (1 << 53))

    def uniform(self, name: str, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random(name)

    def bernoulli(self, name: str, p: float) -> bool:
        return self.random(name) < p

    def integer(self, name: str, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] inclusive."""
        return lo + min(int(self.random(name) * (hi - lo + 1)), hi - lo)

    def choice(self, name: str, options: Sequence[T], probs: Sequence[float] | None = None) -> T:
        u = self.random(name)
        if probs is None:
            return options[min(int(u * len(options)), len(options) - 1)]
        acc = 0.0
        for option, p in zip(options, probs):
            acc += p
            if u < acc:
                return option
        return options[-1]

    def seed32(self, name: str) -> int:
        """A 32-bit seed for a pixel-noise field."""
        return self.bits64(name) & _MASK32


# --- pixel noise from integer hashes -------------------------------------------------------------
def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixing 32-bit integer hash, on int64 tensors holding values in [0, 2^32).

    Every product stays below 2^63, so int64 arithmetic is exact (no overflow) on CPU and CUDA.
    """
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def _coordinate_index(channels: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Index of each (c, y, x) that does not depend on the tensor's size beyond the pixel itself."""
    c = torch.arange(channels, device=device, dtype=torch.int64).view(-1, 1, 1)
    y = torch.arange(height, device=device, dtype=torch.int64).view(1, -1, 1)
    x = torch.arange(width, device=device, dtype=torch.int64).view(1, 1, -1)
    return (c << 26) | (y << 13) | x  # y, x < 8192


def uniform_field(seeds: torch.Tensor, channels: int, height: int, width: int, stream: int) -> torch.Tensor:
    """Per-sample uniform (0, 1) fields of shape (B, C, H, W), float32.

    ``seeds`` is an int64 tensor (B,) of 32-bit seeds; value at (b, c, y, x) depends only on
    (seeds[b], stream, c, y, x).
    """
    if height >= 8192 or width >= 8192:
        raise ValueError("noise fields are limited to 8191 pixels per side")
    idx = _coordinate_index(channels, height, width, seeds.device).unsqueeze(0)  # (1,C,H,W)
    s = seeds.view(-1, 1, 1, 1)
    h = _hash32((idx ^ (stream * 0x9E3779B1 & _MASK32)) & _MASK32)
    h = _hash32((h + s) & _MASK32)
    h = _hash32(h ^ (s * 0x27D4EB2F & _MASK32))
    # top 24 bits → (0, 1) exactly representable in float32
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def normal_field(seeds: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """Per-sample standard-normal fields (B, C, H, W) via Box–Muller on two hashed uniforms."""
    u1 = uniform_field(seeds, channels, height, width, stream=1)
    u2 = uniform_field(seeds, channels, height, width, stream=2)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
