"""The public entry points: :class:`Degrader` (draw + apply) and :func:`replay` (apply only)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .algorithms import Algorithms, batched, check_algorithms, use_algorithms
from .chain import StageTimer, apply_chain
from .config import DegradationConfig
from .parallel import for_each_sample, in_sample_thread
from .sampling import draw_record

#: On CPU with one torch thread a call is degraded in chunks of at most this many HR
#: pixels (16 images of 512²): every stage streams whole-chunk float tensors through
#: memory, so bigger chunks fall out of cache and cost more per pair. With more threads every sample is its own task (see ``parallel``). Samples never
#: depend on their batch, so either way only speed changes.
CPU_CHUNK_PIXELS = 16 * 512 * 512


class Degrader:
    """Degrade uint8 HR batches with per-sample parameters drawn from (config, seed, key).

    >>> deg = Degrader(load_preset("osediff"), device="cpu")
    >>> lr, records = deg(hr, keys=["a", "b"], seed=7)   # hr: uint8 (2, 3, 512, 512)

    A sample's parameters — and, on one device type, its pixels — do not depend on the batch
    it is in, so any batching, ordering or number of workers yields the same dataset.
    ``profile=True`` records per-stage wall time of the last call in ``last_stage_times``.
    ``algorithms="batched"`` runs the algorithms a CUDA device gets on any device (tests; see
    :mod:`.algorithms`).
    """

    def __init__(self, cfg: DegradationConfig, device: str | torch.device = "cpu", profile: bool = False,
                 algorithms: Algorithms = "auto") -> None:
        if not isinstance(cfg, DegradationConfig):
            raise TypeError(f"cfg must be a DegradationConfig (see load_preset), got {type(cfg).__name__}")
        self.cfg = cfg
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        self.profile = profile
        self.algorithms = check_algorithms(algorithms)
        self.last_stage_times: dict[str, float] = {}

    def draw(self, keys: Sequence[str], seed: int, hr_hw: tuple[int, int]) -> list[dict[str, Any]]:
        """The parameter records for ``keys`` without touching pixels (cheap, CPU only)."""
        return [draw_record(self.cfg, seed, key, hr_hw) for key in keys]

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, keys: Sequence[str], seed: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        _check_hr(hr, self.cfg.scale)
        keys = list(keys)
        if len(keys) != hr.shape[0]:
            raise ValueError(f"got {hr.shape[0]} images but {len(keys)} keys")
        records = self.draw(keys, seed, (int(hr.shape[-2]), int(hr.shape[-1])))
        timer = StageTimer(self.profile, self.device)
        hr = hr.to(self.device, non_blocking=True)
        with use_algorithms(self.algorithms):
            if batched(self.device):
                lr, codecs = apply_chain(hr, records, timer)
            else:
                lr, codecs = _apply_on_cpu(hr, records, timer)
        for record, codec in zip(records, codecs):
            record["jpeg_codec"] = codec
            record["device_type"] = self.device.type
        self.last_stage_times = dict(timer.times)
        return lr, records


def _apply_on_cpu(hr: torch.Tensor, records: list[dict[str, Any]], timer: StageTimer) -> tuple[torch.Tensor, list[str]]:
    """One sample per task on the sample pool when torch may use several threads, else
    chunks of ``CPU_CHUNK_PIXELS`` on this thread."""
    n = len(records)
    if n > 1 and torch.get_num_threads() > 1 and not in_sample_thread():
        parts: list[torch.Tensor] = [hr[:0]] * n
        codecs: list[str] = [""] * n

        @torch.no_grad()  # grad mode is per thread
        def one(i: int) -> None:
            lr_i, (codecs[i],) = apply_chain(hr[i : i + 1], records[i : i + 1], timer)
            parts[i] = lr_i

        for_each_sample(one, range(n))
        return torch.cat(parts), codecs
    step = max(1, CPU_CHUNK_PIXELS // (int(hr.shape[-2]) * int(hr.shape[-1])))
    parts, codecs = [], []
    for start in range(0, n, step):
        part, part_codecs = apply_chain(hr[start : start + step], records[start : start + step], timer)
        parts.append(part)
        codecs += part_codecs
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), codecs


@torch.no_grad()
def replay(hr: torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
    """Re-apply one sample's record to its HR image (1, 3, H, W) uint8; returns (1, 3, h, w) uint8.

    Runs on ``hr``'s device; equal to the original LR when run on the same device type.
    """
    if hr.dim() == 3:
        hr = hr.unsqueeze(0)
    _check_hr(hr, int(record["scale"]))
    if hr.shape[0] != 1:
        raise ValueError(f"replay takes one image, got a batch of {hr.shape[0]}")
    lr, _ = apply_chain(hr, [record])
    return lr


def _check_hr(hr: torch.Tensor, scale: int) -> None:
    if not isinstance(hr, torch.Tensor) or hr.dtype != torch.uint8:
        raise TypeError(f"HR must be a uint8 tensor (B, 3, H, W); got {getattr(hr, 'dtype', type(hr))}")
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"HR must have shape (B, 3, H, W); got {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} must be divisible by the scale {scale}")
    if min(h, w) < 8 * scale:
        raise ValueError(f"HR size {h}x{w} is too small for scale {scale} (need at least {8 * scale} px per side)")
