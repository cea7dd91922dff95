"""Sampled parameters: per-sample, deterministic, and distributed as the config says."""
import json
import math
from collections import Counter

import pytest

from pairforge.degradations import draw_record, load_preset
from pairforge.degradations.rng import SampleRng

N = 3000


@pytest.fixture(scope="module")
def records():
    cfg = load_preset("realesrgan-x4plus")
    return cfg, [draw_record(cfg, 11, f"img{i:05d}", (256, 256)) for i in range(N)]


def _within(count: int, n: int, p: float, z: float = 4.5) -> bool:
    """Binomial count within z standard deviations of n·p (fixed seeds: no flakes)."""
    sd = math.sqrt(n * p * (1 - p)) or 1e-9
    return abs(count - n * p) <= z * sd


def test_record_is_a_pure_function_of_config_seed_key():
    cfg = load_preset("osediff")
    a = draw_record(cfg, 3, "k1", (512, 512))
    assert a == draw_record(cfg, 3, "k1", (512, 512))
    assert a != draw_record(cfg, 4, "k1", (512, 512))
    assert a != draw_record(cfg, 3, "k2", (512, 512))
    assert json.loads(json.dumps(a)) == a


def test_keys_with_dots_are_rejected():
    with pytest.raises(ValueError, match="without dots"):
        SampleRng(1, "a.b")


def test_kernel_family_and_sinc_frequencies(records):
    cfg, recs = records
    blurs = [r["first"]["blur"] for r in recs]
    sinc = sum(b["family"] == "sinc" for b in blurs)
    assert _within(sinc, N, cfg.first.blur.sinc_prob)
    fams = Counter(b["family"] for b in blurs if b["family"] != "sinc")
    n = sum(fams.values())
    for fam, p in cfg.first.blur.family_probs.items():
        assert _within(fams[fam], n, p), (fam, fams[fam], n * p)


def test_kernel_parameters_stay_in_range_and_are_uniform(records):
    cfg, recs = records
    lo, hi = cfg.first.blur.sigma_range
    sig = [r["first"]["blur"]["sigma_x"] for r in recs if r["first"]["blur"]["family"] != "sinc"]
    assert all(lo <= s <= hi for s in sig)
    mean = sum(sig) / len(sig)
    assert abs(mean - (lo + hi) / 2) < 4.5 * (hi - lo) / math.sqrt(12 * len(sig))
    sizes = Counter(r["first"]["blur"]["size"] for r in recs)
    assert set(sizes) == set(cfg.first.blur.kernel_sizes)
    for size in cfg.first.blur.kernel_sizes:
        assert _within(sizes[size], N, 1 / len(cfg.first.blur.kernel_sizes))
    iso = [r["first"]["blur"] for r in recs if r["first"]["blur"]["family"] in ("iso", "generalized_iso", "plateau_iso")]
    assert all(b["sigma_x"] == b["sigma_y"] and b["theta"] == 0.0 for b in iso)
    thetas = [r["first"]["blur"]["theta"] for r in recs if r["first"]["blur"]["family"] == "aniso"]
    assert all(-math.pi <= t <= math.pi for t in thetas) and min(thetas) < -2.5 and max(thetas) > 2.5
    omegas = [(b["size"], b["omega"]) for b in (r["first"]["blur"] for r in recs) if b["family"] == "sinc"]
    assert all((math.pi / 3 if s < 13 else math.pi / 5) <= w <= math.pi for s, w in omegas)


def test_beta_split_reproduces_reference_quirk(records):
    _, recs = records
    plateau = [r["first"]["blur"]["beta"] for r in recs if r["first"]["blur"]["family"].startswith("plateau")]
    ones = sum(b == 1.0 for b in plateau)
    assert _within(ones, len(plateau), 0.5)  # U(1, 1) half of the time, as in Real-ESRGAN
    gen = [r["first"]["blur"]["beta"] for r in recs if r["first"]["blur"]["family"].startswith("generalized")]
    assert all(0.5 <= b <= 4.0 for b in gen) and _within(sum(b < 1 for b in gen), len(gen), 0.5)


def test_resize_noise_jpeg_and_order_probabilities(records):
    cfg, recs = records
    dirs = Counter(r["first"]["resize"]["direction"] for r in recs)
    for d, p in zip(("up", "down", "keep"), cfg.first.resize.probs):
        assert _within(dirs[d], N, p)
    for r in recs:
        res = r["first"]["resize"]
        rng_ = {"up": cfg.first.resize.up_range, "down": cfg.first.resize.down_range, "keep": (1.0, 1.0)}[res["direction"]]
        assert rng_[0] <= res["factor"] <= rng_[1]
        assert res["size"] == [int(256 * res["factor"])] * 2
    noise = [r["first"]["noise"] for r in recs]
    assert _within(sum(n["type"] == "gaussian" for n in noise), N, cfg.first.noise.gaussian_prob)
    assert _within(sum(n["gray"] for n in noise), N, cfg.first.noise.gray_prob)
    assert all(1 <= n["sigma"] <= 30 for n in noise if n["type"] == "gaussian")
    assert all(0.05 <= n["scale"] <= 3 for n in noise if n["type"] == "poisson")
    q = [r["first"]["jpeg"]["quality"] for r in recs]
    assert all(isinstance(v, int) and 30 <= v <= 95 for v in q) and min(q) == 30 and max(q) == 95
    blur2 = sum(r["second"]["blur"] is not None for r in recs)
    assert _within(blur2, N, cfg.second.blur_prob)
    order = sum(r["final"]["order"] == "resize_sinc_jpeg" for r in recs)
    assert _within(order, N, cfg.final.resize_then_jpeg_prob)
    sinc = sum(r["final"]["sinc"] is not None for r in recs)
    assert _within(sinc, N, cfg.final.sinc_prob)
    assert all(r["final"]["resize"]["size"] == [64, 64] for r in recs)
    assert all(r["second"]["resize"]["size"] == [int(64 * r["second"]["resize"]["factor"])] * 2 for r in recs)


def test_second_order_can_be_skipped_per_sample():
    cfg = load_preset("osediff", second_order_prob=0.5)
    recs = [draw_record(cfg, 0, f"k{i}", (512, 512)) for i in range(400)]
    assert _within(sum(r["second"]["applied"] for r in recs), 400, 0.5)
    assert all(set(r["second"]) == {"applied"} for r in recs if not r["second"]["applied"])


def test_milder_preset_draws_milder_values():
    cfg = load_preset("adcsr-mild")
    recs = [draw_record(cfg, 5, f"k{i}", (512, 512)) for i in range(300)]
    assert all(60 <= r["first"]["jpeg"]["quality"] <= 95 for r in recs)
    assert all(r["first"]["noise"]["sigma"] <= 15 for r in recs if r["first"]["noise"]["type"] == "gaussian")
    second = [r["second"]["blur"] for r in recs if r["second"]["blur"]]
    assert max(b["size"] for b in second) == 21  # stage 2 draws 7-21 too, as AdcSR's dataset.py does
    blurs = [r["first"]["blur"] for r in recs] + second
    assert all(b["beta"] <= 2.0 for b in blurs if b["family"].startswith("generalized"))
    assert all(b["beta"] <= 1.5 for b in blurs if b["family"].startswith("plateau"))
    assert all(r["second"]["noise"]["scale"] <= 1.0 for r in recs if r["second"]["noise"]["type"] == "poisson")
