"""Apply parameter records to an HR batch: the second-order chain, step by step.

This function never draws anything: every choice comes from the records, so the same
code path serves fresh degradation (:class:`~degradations.Degrader`) and exact replay
(:func:`~degradations.replay`).

  [USM] → blur₁ → resize₁ → noise₁ → JPEG₁ → (second order: [blur₂] → resize₂ → noise₂)
        → final: (resize → [sinc] → JPEG) or (JPEG → resize → [sinc]) → 8-bit LR
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from .canvas import Canvas
from .filters import blur, usm_sharpen
from .jpeg import jpeg
from .noise import add_noise
from .resize import resize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Record fields that must be equal across a batch (they select code paths, not values).
SHARED_FIELDS = ("scale", "usm", "jpeg_backend", "compute_dtype", "hr_size")


class StageTimer:
    """Wall-clock seconds per stage, added up across threads (thread-safe).

    With a CUDA ``device`` each stage starts and ends with a synchronize, so GPU time lands on
    the stage that queued it.  Without one (``device=None``, or a CPU device) it never waits
    for the GPU: host-side stages timed in helper threads must not stall behind GPU work.
    Stages that run side by side on threads each add their own time, so stage times then sum
    to thread-seconds (about threads × wall time); the shares stay meaningful.  A stage whose
    body raises adds nothing.
    """

    def __init__(self, enabled: bool = True, device: torch.device | str | None = None) -> None:
        self.enabled = enabled
        self.device = torch.device(device) if device is not None else None
        self.times: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        elapsed = time.perf_counter() - t0
        with self._lock:
            self.times[name] = self.times.get(name, 0.0) + elapsed

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def apply_chain(hr: torch.Tensor, records: Sequence[dict[str, Any]], timer: StageTimer | None = None) -> tuple[torch.Tensor, list[str]]:
    """Degrade uint8 HR (B, 3, H, W) following ``records``; returns uint8 LR and per-sample JPEG codec names."""
    if len(records) != hr.shape[0]:
        raise ValueError(f"{hr.shape[0]} images but {len(records)} records")
    first_rec = records[0]
    for field in SHARED_FIELDS:
        if any(r[field] != first_rec[field] for r in records):
            raise ValueError(f"records in one batch must share {field!r}; degrade them in separate calls")
    if list(hr.shape[-2:]) != list(first_rec["hr_size"]):
        raise ValueError(f"HR is {list(hr.shape[-2:])} but the records were drawn for {first_rec['hr_size']}")
    timer = timer or StageTimer(False, hr.device)
    dtype = DTYPES[first_rec["compute_dtype"]]
    backend = first_rec["jpeg_backend"]
    codecs = [""] * len(records)

    with timer.stage("to_float"):
        x = hr.to(dtype).div_(255)  # same values as hr.to(dtype) / 255, one pass fewer
    if first_rec["usm"]:
        u = first_rec["usm"]
        with timer.stage("usm"):
            x = usm_sharpen(x, u["radius"], u["sigma"], u["weight"], u["threshold"])
    canvas = Canvas.uniform(x)

    with timer.stage("blur1"):
        canvas = blur(canvas, [r["first"]["blur"] for r in records])
    with timer.stage("resize1"):
        canvas = resize(canvas, [r["first"]["resize"] for r in records], by_factor=True)
    with timer.stage("noise1"):
        canvas = add_noise(canvas, [r["first"]["noise"] for r in records])
    with timer.stage("jpeg1"):
        canvas, codec = jpeg(canvas, [r["first"]["jpeg"]["quality"] for r in records], backend)
        codecs = [codec] * len(records)

    second = [r["second"] if r["second"]["applied"] else None for r in records]
    with timer.stage("blur2"):
        canvas = blur(canvas, [s["blur"] if s else None for s in second])
    with timer.stage("resize2"):
        canvas = resize(canvas, [s["resize"] if s else None for s in second])
    with timer.stage("noise2"):
        canvas = add_noise(canvas, [s["noise"] if s else None for s in second])

    lr_h, lr_w = records[0]["final"]["resize"]["size"]
    out = canvas.data.new_zeros((len(records), canvas.data.shape[1], lr_h, lr_w))
    for order in ("resize_sinc_jpeg", "jpeg_resize_sinc"):
        index = [i for i, r in enumerate(records) if r["final"]["order"] == order]
        if not index:
            continue
        sub = canvas if len(index) == len(records) else canvas.subset(index)
        finals = [records[i]["final"] for i in index]
        quality = [f["jpeg"]["quality"] for f in finals]
        if order == "jpeg_resize_sinc":
            with timer.stage("jpeg2"):
                sub, _ = jpeg(sub, quality, backend)
        with timer.stage("resize3"):
            sub = resize(sub, [f["resize"] for f in finals])
        with timer.stage("sinc"):
            sub = blur(sub, [f["sinc"] for f in finals])
        if order == "resize_sinc_jpeg":
            with timer.stage("jpeg2"):
                sub, _ = jpeg(sub, quality, backend)
        if len(index) == len(records):
            out = sub.data
        else:
            out[torch.as_tensor(index, device=out.device)] = sub.data
    with timer.stage("quantize"):
        lr = (out.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return lr, codecs
