"""One command that checks a GPU node in a few minutes, and writes one results file.

    python bench/gpu_check.py [--out FILE] [--work DIR] [--skip NAME ...]     (make gpu-check)

Checks, in order (each one a section of the results file; each runs only if CUDA is there):

1. ``cuda-tests``: the suite's CUDA tests (``-k cuda or bf16``: degradation on CUDA, bf16 upscale).
2. ``degradation``: pairs/s per preset at 256² and 512² with the real and the differentiable
   JPEG on the GPU, beside the same batch on the CPU path; the real JPEG's host round trip (its
   stage time); the CPU-vs-GPU bound (mean absolute difference in 8-bit levels).
3. ``train-step``: ``pairforge train --preset d3sr-sd21`` (random SD2.1-base weights in diffusers
   layout, bench/full_size_commands.py) for 2 steps in bf16 on one GPU at 512², batch 1, per
   ZeRO stage (2 and 3): wall time, peak GPU memory (nvidia-smi, sampled), exit status.
4. ``upscale``: the export of the first run that trained: latency of one 512² output (beside
   D3SR's published 0.11 s on an A100) and the peak GPU memory of a 2048² tiled output.

Without CUDA every check is listed as skipped, with the reason, and the script exits 0, so its
plumbing is proven before a GPU is lent (tests/test_gpu_check.py). A check that fails is
recorded with its error and the next one runs; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))  # full_size_commands, degradations (the bench's, first on the path)
PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
CHECKS = ("cuda-tests", "degradation", "train-step", "upscale")
#: D3SR's reported latency for a 512² output on an A100-40GB (paper, complexity table; shared/reference/methods.md)
D3SR_A100_S = 0.11


class Skipped(Exception):
    """A check that could not run here, with the reason."""


def cuda_tests(ctx: dict) -> list[str]:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_degradations_degrader.py", "tests/test_upscale.py", "-k", "cuda or bf16"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-300:]
    if res.returncode != 0:
        raise RuntimeError(f"CUDA tests failed: {summary}\n{res.stdout[-3000:]}")
    return [f"pytest (CUDA tests): {summary}"]


def degradation(ctx: dict) -> list[str]:
    from degradations import make_hr  # bench/degradations.py: its sample-photo HR batches
    from pairforge.degradations import Degrader, load_preset

    rows = ["| preset | HR | JPEG | GPU pairs/s | CPU pairs/s | GPU JPEG stages s | GPU−CPU mean abs. difference (8-bit levels) |",
            "|---|---|---|---|---|---|---|"]
    for size, batch in ((256, 32), (512, 16)):
        hr = make_hr(batch, size)
        keys = [f"g{i}" for i in range(batch)]
        for preset in ("realesrgan-x4plus", "osediff"):
            for backend in ("real", "differentiable"):
                cfg = load_preset(preset, jpeg_backend=backend)
                gpu = Degrader(cfg, device="cuda", profile=True)
                gpu(hr, keys, seed=0)  # warm-up: kernels, cuDNN plans
                torch.cuda.synchronize()
                t = time.perf_counter()
                lr_gpu, _ = gpu(hr, keys, seed=0)
                torch.cuda.synchronize()
                gpu_s = time.perf_counter() - t
                jpeg_s = sum(v for k, v in gpu.last_stage_times.items() if k.startswith("jpeg"))
                t = time.perf_counter()
                lr_cpu, _ = Degrader(cfg, device="cpu")(hr, keys, seed=0)
                cpu_s = time.perf_counter() - t
                diff = (lr_gpu.cpu().float() - lr_cpu.float()).abs().mean().item()
                rows.append(f"| {preset} | {size}² | {backend} | {batch / gpu_s:.1f} | {batch / cpu_s:.1f} | "
                            f"{jpeg_s:.3f} | {diff:.2f} |")
    return rows


class GpuMemoryPeak:
    """Peak used memory of GPU 0 (MiB) sampled with nvidia-smi while the block runs (another
    process's allocations: a training run's ranks)."""

    def __enter__(self) -> "GpuMemoryPeak":
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=10).stdout
                self.peak = max(self.peak, int(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.5)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def train_step(ctx: dict) -> list[str]:
    from full_size_commands import write_sd21_folder

    work: Path = ctx["work"]
    models = work / "sd21-random"
    if not (models / "unet").is_dir():
        write_sd21_folder(models)
    synth = subprocess.run([*PAIRFORGE, "synth", "--source", "bundled", "--out", str(work / "ds"), "--preset",
                            "realesrgan-x4plus", "--patch-size", "512", "--patches-per-image", "1", "--views", "1",
                            "--no-progress"], capture_output=True, text=True, timeout=600)
    if synth.returncode != 0:
        raise RuntimeError(f"synth failed: {synth.stderr[-2000:]}")
    data = synth.stdout.strip().splitlines()[-1]
    rows = ["| case | exit | wall s (2 steps, with start-up) | peak GPU memory MiB |", "|---|---|---|---|"]
    for zero in (2, 3):
        out = work / f"run-zero{zero}"
        cmd = [*PAIRFORGE, "train", "--preset", "d3sr-sd21", "--data", data, "--out", str(out), "--overwrite",
               "--steps", "2", "--ranks", "1", "--zero-stage", str(zero), "--precision", "bf16",
               "--crop-size", "512", "--batch-size", "1", "--val-every", "0",
               "--set", f"generator.pretrained_path={models}", "--set", f"discriminator.pretrained_path={models}",
               "--set", "generator.text_embedding=zeros", "--set", "log.image_every=0"]
        t = time.perf_counter()
        with GpuMemoryPeak() as mem:
            res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
        rows.append(f"| d3sr-sd21, 1 GPU, ZeRO-{zero}, bf16, 512², batch 1 | {res.returncode} | "
                    f"{time.perf_counter() - t:.0f} | {mem.peak} |")
        if res.returncode == 0 and "export" not in ctx:
            ctx["export"] = out / "export"
        elif res.returncode != 0:
            rows.append(f"| (stderr) | {res.stderr.strip().splitlines()[-1][:200] if res.stderr.strip() else ''} | | |")
    return rows


def upscale(ctx: dict) -> list[str]:
    from pairforge.training.model.sr_models import load_model

    if "export" not in ctx:
        raise Skipped("no training run exported a model (train-step did not run or failed)")
    model = load_model(ctx["export"], "cuda")
    rows = ["| output | tile | latency s | peak GPU memory MiB |", "|---|---|---|---|"]
    for side, tile in ((512, 0), (2048, 512)):
        lr = torch.rand(1, 3, side // 4, side // 4)
        model.upscale(lr, 4, tile=tile)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        model.upscale(lr, 4, tile=tile)
        torch.cuda.synchronize()
        rows.append(f"| {side}² | {tile or 'whole'} | {time.perf_counter() - t:.3f} | "
                    f"{torch.cuda.max_memory_allocated() / 2**20:.0f} |")
    rows.append(f"\nD3SR reports {D3SR_A100_S} s for a 512² output on an A100 (bf16 here).")
    return rows


RUNNERS: dict[str, Callable[[dict], list[str]]] = {
    "cuda-tests": cuda_tests, "degradation": degradation, "train-step": train_step, "upscale": upscale}


def run_checks(skip: set[str], work: Path) -> tuple[list[str], bool]:
    """Every check's section (Markdown lines) and whether all that ran passed."""
    ok, ctx = True, {"work": work}
    lines = []
    for name in CHECKS:
        lines += ["", f"## {name}", ""]
        t = time.perf_counter()
        try:
            if name in skip:
                raise Skipped("--skip")
            if not torch.cuda.is_available():
                raise Skipped("no CUDA device (torch.cuda.is_available() is False)")
            lines += RUNNERS[name](ctx)
            lines.append(f"\n({time.perf_counter() - t:.0f} s)")
        except Skipped as why:
            lines.append(f"skipped: {why}")
        except Exception as exc:  # a failed check is recorded; the next one still runs
            ok = False
            lines += ["failed:", "```", "".join(traceback.format_exception(exc))[-3000:], "```"]
        print(f"gpu-check: {name}: {lines[-1] if lines[-1] else 'done'}", file=sys.stderr)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results") / f"gpu-check-{time.strftime('%Y-%m-%d')}.md",
                    help="the results file (default bench/results/gpu-check-DATE.md)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--skip", nargs="*", default=[], choices=CHECKS, help="checks not to run")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="pairforge-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    head = [f"# gpu-check {time.strftime('%Y-%m-%d %H:%M')}", "",
            f"device: {device}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"Python {platform.python_version()}; host {platform.node()}"]
    lines, ok = run_checks(set(args.skip), work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head + lines) + "\n")
    print(json.dumps({"ok": ok, "out": str(args.out), "device": device}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
