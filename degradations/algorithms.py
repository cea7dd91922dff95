"""Which implementation of a stage runs: the per-sample CPU algorithms, or the batched ones a
CUDA device gets (grouped blur over the shared canvas, the whole batch through the chain at
once, Poisson draws on the device).

Why selectable: no GPU is at hand where the suite runs, yet the batched code must have run
before one is lent. ``Degrader(..., algorithms="batched")`` runs the CUDA algorithms on the CPU
(tests/test_degradations_degrader.py bounds how far they are from the CPU ones). The choice is a
context variable set for one ``Degrader`` call; pool threads never see it, and they only exist
on the per-sample path.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Literal

import torch

#: ``Degrader(algorithms=...)`` values: "auto" = by device (CPU: per-sample, CUDA: batched)
ALGORITHMS = ("auto", "batched")
Algorithms = Literal["auto", "batched"]

_FORCE_BATCHED: ContextVar[bool] = ContextVar("pairforge_force_batched", default=False)


def batched(device: torch.device) -> bool:
    """Whether a stage on ``device`` runs its batched (CUDA) algorithm."""
    return device.type != "cpu" or _FORCE_BATCHED.get()


def check_algorithms(kind: str) -> Algorithms:
    """``kind`` if it is one of :data:`ALGORITHMS`, else a ValueError naming them."""
    if kind not in ALGORITHMS:
        raise ValueError(f"algorithms must be one of {ALGORITHMS}, got {kind!r}")
    return kind


@contextlib.contextmanager
def use_algorithms(kind: Algorithms) -> Iterator[None]:
    """Run the block with the given algorithm choice (see :data:`ALGORITHMS`)."""
    token = _FORCE_BATCHED.set(check_algorithms(kind) == "batched")
    try:
        yield
    finally:
        _FORCE_BATCHED.reset(token)
