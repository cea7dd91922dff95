"""Counter-based randomness: every draw is a pure function of (seed, sample key, name).

This module is pairforge's one place where seeds are derived: the degradation engine's
per-parameter streams, the pipeline's crop seeds and the trainer's shuffles all come from here.

Why not one ``torch.Generator`` per batch: its stream depends on how many values earlier
samples consumed, so a sample's degradation would change with batch size, batch order,
worker count or a retry. Here each named parameter of each sample has its own stream
(a keyed BLAKE2b hash of seed, key and name), and each noise field gets its own 32-bit
seed for a per-sample ``torch.Generator``, so a sample is the same wherever and with
whomever it is processed.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Sequence, TypeVar

import numpy as np

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

    def numpy(self, name: str) -> np.random.Generator:
        """A numpy generator (Philox, 128-bit key) for array-valued draws such as permutations."""
        key = (self.bits64(f"{name}#hi") << 64) | self.bits64(f"{name}#lo")
        return np.random.Generator(np.random.Philox(key=key))


def crop_seed(seed: int, key: str, purpose: str) -> int:
    """The 63-bit seed of a sample's crop/flip pipeline (``purpose`` names the use).

    Its byte layout (sha256 of ``pairforge:{purpose}:{seed}:{key}``) predates :class:`SampleRng`
    and is kept as it is: dataset ids name pipeline version 1, whose crops depend on it. Move it
    onto SampleRng together with the next pipeline version bump.
    """
    digest = hashlib.sha256(f"pairforge:{purpose}:{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
