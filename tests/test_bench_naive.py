"""Quick checks of the naive reference chain used as the benchmark baseline (no timings)."""
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import naive_reference as nr  # noqa: E402 - importable only once the repo root is on sys.path


def _hr(b=2, size=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, size // 8, size // 8, generator=g)
    img = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear")
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("preset", ["realesrgan-x4plus", "osediff"])
def test_naive_chain_shape_dtype_and_determinism(preset):
    hr = _hr()
    deg = nr.NaiveDegrader(preset, profile=True)
    for seed in range(4):  # several seeds: both final orders, noise types, resize directions
        deg.reseed(seed)
        torch.manual_seed(seed)
        lr = deg(hr)
        assert lr.shape == (2, 3, 40, 40) and lr.dtype == torch.uint8
        assert set(deg.last_stage_times) >= {"kernels", "blur1", "jpeg1", "jpeg2", "quantize"}
    deg2 = nr.NaiveDegrader(preset)
    deg.reseed(3), deg2.reseed(3)
    torch.manual_seed(3)
    a = deg(hr)
    torch.manual_seed(3)
    b = deg2(hr)
    assert torch.equal(a, b)
    # LR resembles a downscaled HR (the chain blurs and adds noise, it does not scramble)
    ref = torch.nn.functional.interpolate(hr.float(), size=(40, 40), mode="area")
    assert (a.float() - ref).abs().mean() < 40


def test_kernels_normalised_and_padded():
    s = nr.settings_for("realesrgan-x4plus")
    rng, pyrng = np.random.RandomState(0), random.Random(0)
    for _ in range(50):
        for k in nr.sample_kernels(s, rng, pyrng):
            assert k.shape == (21, 21)
            assert abs(float(k.sum()) - 1) < 1e-4
    k = nr.gaussian_kernel(21, 2.0, 2.0, 0.0)  # isotropic: variance along x equals sigma^2
    x = np.arange(21) - 10
    assert abs((k.sum(0) * x * x).sum() - 4.0) < 1e-3
    assert abs(nr.usm_kernel(51)[0].sum().item() - 1) < 1e-5


def test_filter2d_paths_agree_and_jpeg_is_close_at_high_quality():
    x = torch.rand(2, 3, 48, 48)
    k = nr.usm_kernel(51)
    assert torch.allclose(nr.filter2d(x, k, "grouped"), nr.filter2d(x, k, "batch"), atol=1e-6)
    img = _hr(1, 64).float() / 255
    codec = nr.NaiveJPEG("cpu")
    psnr = {}
    for q in (30.0, 95.0):
        out = codec(img, torch.tensor([q]))
        assert out.shape == img.shape
        psnr[q] = 10 * math.log10(1 / ((out - img) ** 2).mean().item())
    assert psnr[95.0] > 28 and psnr[95.0] > psnr[30.0] + 3


def test_degradation_benchmark_runs_and_reports_speedups_with_intervals(tmp_path):
    """A tiny end-to-end run of bench/degradations.py (timings are printed, never asserted)."""
    from bench import degradations as bench

    out = bench.main(["--presets", "osediff", "--batches", "2", "--hr-size", "128", "--backends", "real",
                      # exactly 3 rounds whatever the load: no error target, no pair minimum, and a
                      # time budget no busy machine reaches (it once stopped a loaded run at 2)
                      "--repeats", "3", "--target-rse", "1e9", "--min-pairs", "0", "--max-seconds", "600",
                      "--profile-calls", "1",
                      "--json", str(tmp_path / "bench.json")])
    (row,) = out["results"]
    assert row["pairforge"]["calls"] == row["naive"]["calls"] == 3
    assert row["speedup"] == pytest.approx(row["pairforge"]["pairs_per_s"] / row["naive"]["pairs_per_s"])
    low, high = row["speedup_ci95"]
    assert low < row["speedup"] < high
    assert row["pairforge_stages"]["seconds"] and row["naive_stages"]["seconds"]
    assert (tmp_path / "bench.json").exists()
