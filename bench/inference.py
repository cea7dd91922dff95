"""Inference benchmark: latency and images/s per 512² output (prints tables; nothing asserted).

1. CPU, the ``tiny`` generator (what the demo trains): one-step forward at 512² output, batch 1
   and 4, beside bicubic ×4 (the floor every SR method pays) — and the whole ``pairforge
   upscale`` path (tiling machinery, colour fix) for one 512² output;
2. with a CUDA device, D3SR's generator at full size (SD2.1 VAE + UNet with LoRA, random init;
   timing does not depend on the weights) at 512² in bf16: eager, channels_last, torch.compile,
   and both — against D3SR's published 0.11 s per 512² on an A100 and the target ≤ 0.06 s on
   one H100-class GPU;
3. with a CUDA device, a 2048² output through latent tiles: seconds and peak GPU memory
   against the 24 GB target.

    python bench/inference.py [--repeats 10] [--no-compile] [--out bench/results/FILE.md]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/full_size.py

#: D3SR (camera-ready, Table: inference time) — one 512² output on an A100, one step
D3SR_A100_S = 0.11
TARGET_GPU_S = 0.06
TARGET_2048_GB = 24.0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float], batch: int) -> tuple[float, float, float]:
    """(median s per call, s per image, images/s)."""
    med = statistics.median(times)
    return med, med / batch, batch / med


def table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n## {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in r) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# --------------------------------------------------------------------------- CPU: tiny
def tiny_generator():
    from pairforge.training.config import load_config
    from pairforge.training.model.networks import build_generator

    cfg = load_config(preset="tiny")
    return build_generator(cfg.generator, seed=0).eval().requires_grad_(False)


def bench_cpu(repeats: int) -> str:
    import torch
    import torch.nn.functional as F

    from pairforge.training.model.inference import upscale_tensor

    dev = torch.device("cpu")
    gen = tiny_generator()
    rows = []
    for batch in (1, 4):
        lr = torch.rand(batch, 3, 128, 128)
        bic = summary(time_call(lambda lr=lr: F.interpolate(lr, scale_factor=4, mode="bicubic"), dev, repeats), batch)

        def forward(lr: torch.Tensor = lr) -> None:
            with torch.inference_mode():
                gen(F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1))

        one = summary(time_call(forward, dev, repeats), batch)
        rows.append([f"tiny one-step forward, batch {batch}", one[1], one[2], bic[1], bic[2]])
    lr1 = torch.rand(1, 3, 128, 128)
    up = summary(time_call(lambda: upscale_tensor(gen, lr1, 4), dev, repeats), 1)
    bic1 = rows[0][3], rows[0][4]
    rows.append(["`pairforge upscale` path (tiles, shared norms)", up[1], up[2], *bic1])
    return table(f"CPU, 512² output, {torch.get_num_threads()} torch threads ({platform.processor() or platform.machine()})",
                 ["what", "s / image", "images/s", "bicubic s / image (baseline)", "bicubic images/s"], rows)


# --------------------------------------------------------------------------- GPU: full size
def bench_gpu_full(repeats: int, compile_too: bool) -> str:
    import torch
    import torch.nn.functional as F
    from full_size import sd21_generator

    dev = torch.device("cuda")
    rows = []
    variants = [("eager", False, False), ("channels_last", True, False)]
    if compile_too:
        variants += [("torch.compile", False, True), ("torch.compile + channels_last", True, True)]
    for name, channels_last, compiled in variants:
        gen = sd21_generator().to(dev, torch.bfloat16).eval().requires_grad_(False)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            gen = gen.to(memory_format=torch.channels_last)
        run = torch.compile(gen) if compiled else gen
        for batch in (1, 4):
            lr = torch.rand(batch, 3, 128, 128, device=dev)

            def forward(lr: torch.Tensor = lr, run=run, fmt=fmt) -> None:
                with torch.inference_mode():
                    x = F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1).to(torch.bfloat16)
                    run(x.contiguous(memory_format=fmt))

            t = time.perf_counter()
            forward()  # a compiled variant compiles here
            first = time.perf_counter() - t
            s = summary(time_call(forward, dev, repeats, warmup=3), batch)
            ok = "✓" if s[1] <= TARGET_GPU_S else "✗"
            rows.append([name, batch, s[1], s[2], D3SR_A100_S, f"≤ {TARGET_GPU_S} {ok}", f"{first:.1f}"])
        del gen, run
        torch.cuda.empty_cache()
    return table(f"Full-size D3SR generator (SD2.1 VAE+UNet, LoRA 16, random init), 512² output, bf16, "
                 f"{torch.cuda.get_device_name()}",
                 ["variant", "batch", "s / image", "images/s", "D3SR A100 s (published)", "target", "first call s"],
                 rows)


def bench_gpu_2048() -> str:
    import torch
    from full_size import sd21_generator

    from pairforge.training.model.inference import upscale_tensor

    dev = torch.device("cuda")
    gen = sd21_generator().to(dev, torch.bfloat16).eval().requires_grad_(False)
    lr = torch.rand(1, 3, 512, 512)
    rows = []
    for tile, vae_tile in ((512, 1024), (1024, 1024)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = upscale_tensor(gen, lr, 4, tile=tile, vae_tile=vae_tile, bf16=True)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30
        assert out.shape[-2:] == (2048, 2048)
        rows.append([tile, vae_tile, secs, peak, f"≤ {TARGET_2048_GB:.0f} GB {'✓' if peak <= TARGET_2048_GB else '✗'}"])
    return table("2048² output through latent tiles (full-size generator, bf16)",
                 ["UNet tile px", "VAE tile px", "seconds", "peak GPU GiB", "target"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per GPU row (median reported)")
    ap.add_argument("--cpu-repeats", type=int, default=3, help="timed calls per CPU row (seconds each)")
    ap.add_argument("--no-compile", action="store_true", help="GPU: skip the torch.compile rows")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    a = ap.parse_args(argv)

    import torch

    parts = [f"# bench/inference.py — torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"]
    parts.append(bench_cpu(a.cpu_repeats))
    if torch.cuda.is_available() and not a.cpu_only:
        parts.append(bench_gpu_full(a.repeats, not a.no_compile))
        parts.append(bench_gpu_2048())
    else:
        note = "\n(no CUDA device: the full-size GPU rows and the 2048² tiling row were not measured)"
        print(note)
        parts.append(note)
    if a.out:
        Path(a.out).write_text("\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
