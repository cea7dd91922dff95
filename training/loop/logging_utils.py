"""Observability: tqdm progress bar, DIR/metrics.jsonl, TensorBoard scalars and image grids.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (``step``,
``loss_g``, ``loss_d`` and the loss parts, ``samples_per_s``, ``epoch`` …);
``validation.jsonl`` one object per validation run. On resume, lines past the resumed step
are dropped so the curves continue without duplicates.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def truncate_jsonl(path: Path, max_step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
    path.write_text("".join(line + "\n" for line in keep))


def image_grid(lr_up: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, max_rows: int = 4) -> torch.Tensor:
    """(3, rows·H, 3·W) grid, one row per sample: LR (bicubic ↑) | SR | HR, values in [0, 1]."""
    n = min(max_rows, lr_up.shape[0])
    rows = [torch.cat([lr_up[i], sr[i], hr[i]], dim=-1) for i in range(n)]
    return torch.cat(rows, dim=-2).float().clamp(0, 1).cpu()


def save_png(img: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] as an 8-bit PNG, rounded by the one rule (:func:`pixels.to_uint8`)."""
    from PIL import Image

    from pairforge.training.model.pixels import to_uint8

    arr = to_uint8(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


class RunLogger:
    def __init__(self, out_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress_bar: bool = True):
        self.out = Path(out_dir)
        self.enabled = enabled
        self.tb = None
        self.bar = None
        self._t = time.perf_counter()
        self._samples = 0
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "validation.jsonl"):
            truncate_jsonl(self.out / name, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step + 1)
            except Exception as exc:  # tensorboard missing: keep training
                print(f"[pairforge] tensorboard disabled: {exc}")
        if progress_bar:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def count(self, samples: int) -> None:
        self._samples += samples

    def rate(self) -> float:
        """Samples/s since the previous call (all ranks)."""
        now = time.perf_counter()
        r = self._samples / max(now - self._t, 1e-9)
        self._t, self._samples = now, 0
        return r

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])
        if self.bar is not None:
            self.bar.set_postfix(loss_g=f"{record['loss_g']:.4f}", loss_d=f"{record['loss_d']:.4f}",
                                 sps=f"{record.get('samples_per_s', 0):.1f}")

    def log_validation(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.out / "validation.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"val/{k}", v, record["step"])

    def log_images(self, step: int, grid: torch.Tensor) -> None:
        if not self.enabled:
            return
        save_png(grid, self.out / "samples" / f"step{step:08d}.png")
        if self.tb is not None:
            self.tb.add_image("val/LR|SR|HR", grid, step)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
