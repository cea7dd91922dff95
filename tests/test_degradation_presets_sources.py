"""Every bundled preset against the values its source repository's code draws.

Each preset has a table of the source's own option names and values, each with the file it
was read from (repository, commit, path). The tests map those options onto our config fields
and check (1) the preset's fields equal them and (2) records drawn from the preset stay in
(and cover) those ranges. A preset that drifts from its source fails here, naming the option.

Also here: the second-order coin of ``resshift`` (its own random stream, per sample, replayed
exactly), and pins of ``realesrgan-x4plus``'s fingerprint, a record and its LR pixels as they
were before the coin existed in presets, because dataset ids depend on them.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from skimage import data

from pairforge.degradations import Degrader, available_presets, draw_record, load_preset, replay
from pairforge.degradations.describe import describe_record

FAMILIES = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
FAMILY_PROBS = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
SIZES_7_21 = list(range(7, 22, 2))

# --- source tables ------------------------------------------------------------------------------
# Each value: (value, file it was read from). Repositories at the commits named in ``REPOS``.
REPOS = {
    "realesrgan-x4plus": "xinntao/Real-ESRGAN @ a4abfb2979a7bbff3f69f58f58ae324608821e27",
    "osediff": "cswry/OSEDiff @ fcc4f09c7ed66a9bc0ba9433940d76b343142426",
    "adcsr-mild": "Guaishou74851/AdcSR @ d0b2871e3de9f877e4aebb9bfaf23227b22ac25d",
    "resshift": "zsyOAOA/ResShift @ 3ce1d81e8402fd50083809ae288a3977f6921bdd "
    "(SinSR: wyf0912/SinSR @ f1735490e980162435391162ddd18c0642327c5b, configs/SinSR.yaml, same values)",
}

_X4_YML = "options/train_realesrgan_x4plus.yml"
_X4_DATA = "realesrgan/data/realesrgan_dataset.py"
_X4_MODEL = "realesrgan/models/realesrgan_model.py"
REALESRGAN_X4PLUS: dict[str, tuple[Any, str]] = {
    "gt_size": (256, _X4_YML),
    "usm": (True, f"{_X4_MODEL} (feed_data degrades gt_usm)"),
    "kernel_list": (FAMILIES, _X4_YML),
    "kernel_prob": (FAMILY_PROBS, _X4_YML),
    "kernel_range": (SIZES_7_21, f"{_X4_DATA} (hard-coded 2*v+1 for v in 3..10)"),
    "sinc_prob": (0.1, _X4_YML),
    "blur_sigma": ([0.2, 3.0], _X4_YML),
    "betag_range": ([0.5, 4.0], _X4_YML),
    "betap_range": ([1.0, 2.0], _X4_YML),
    "resize_prob": ([0.2, 0.7, 0.1], _X4_YML),
    "resize_range": ([0.15, 1.5], _X4_YML),
    "gaussian_noise_prob": (0.5, _X4_YML),
    "noise_range": ([1.0, 30.0], _X4_YML),
    "poisson_scale_range": ([0.05, 3.0], _X4_YML),
    "gray_noise_prob": (0.4, _X4_YML),
    "jpeg_range": ([30, 95], _X4_YML),
    "second_order_prob": (1.0, f"{_X4_MODEL} (second stage always runs)"),
    "second_blur_prob": (0.8, _X4_YML),
    "kernel_list2": (FAMILIES, _X4_YML),
    "kernel_prob2": (FAMILY_PROBS, _X4_YML),
    "kernel_range2": (SIZES_7_21, _X4_DATA),
    "sinc_prob2": (0.1, _X4_YML),
    "blur_sigma2": ([0.2, 1.5], _X4_YML),
    "betag_range2": ([0.5, 4.0], _X4_YML),
    "betap_range2": ([1.0, 2.0], _X4_YML),
    "resize_prob2": ([0.3, 0.4, 0.3], _X4_YML),
    "resize_range2": ([0.3, 1.2], _X4_YML),
    "gaussian_noise_prob2": (0.5, _X4_YML),
    "noise_range2": ([1.0, 25.0], _X4_YML),
    "poisson_scale_range2": ([0.05, 2.5], _X4_YML),
    "gray_noise_prob2": (0.4, _X4_YML),
    "jpeg_range2": ([30, 95], _X4_YML),
    "final_sinc_prob": (0.8, _X4_YML),
    "final_kernel_range": (SIZES_7_21, _X4_DATA),
    "final_omega_range": ([math.pi / 3, math.pi], _X4_DATA),
    "final_resize_first_prob": (0.5, f"{_X4_MODEL} (np.random.uniform() < 0.5)"),
}

_OSE_YML = "dataloaders/params_realesrgan.yml"
_OSE_PY = "dataloaders/realesrgan.py"
OSEDIFF = {
    **{k: (v, _OSE_YML) for k, (v, _) in REALESRGAN_X4PLUS.items()},
    "gt_size": (512, "dataloaders/realsr_dataset.py (transforms.RandomCrop((512, 512)))"),
    "usm": (False, f"{_OSE_PY} (usm_shaper call commented out in degrade_process)"),
    "kernel_range": (SIZES_7_21, _OSE_PY),
    "kernel_range2": (SIZES_7_21, _OSE_PY),
    "final_kernel_range": (SIZES_7_21, _OSE_PY),
    "final_omega_range": ([math.pi / 3, math.pi], _OSE_PY),
    "second_order_prob": (1.0, f"{_OSE_PY} (second stage always runs)"),
    "final_resize_first_prob": (0.5, _OSE_PY),
}

_ADC_YML = "config.yml"
_ADC_PY = "dataset.py"
ADCSR = {
    "gt_size": (512, _ADC_YML),
    "usm": (False, f"{_ADC_PY} (RealESRGANDegrader.degrade blurs self.gt, no USMSharp)"),
    "kernel_list": (FAMILIES, _ADC_YML),
    "kernel_prob": (FAMILY_PROBS, _ADC_YML),
    "kernel_range": (SIZES_7_21, f"{_ADC_PY} (hard-coded kernel_range 7..21)"),
    "sinc_prob": (0.1, _ADC_YML),
    "blur_sigma": ([0.2, 1.5], _ADC_YML),
    "betag_range": ([0.5, 2.0], _ADC_YML),
    "betap_range": ([1.0, 1.5], _ADC_YML),
    "resize_prob": ([0.2, 0.7, 0.1], _ADC_YML),
    "resize_range": ([0.3, 1.5], _ADC_YML),
    "gaussian_noise_prob": (0.5, _ADC_YML),
    "noise_range": ([1.0, 15.0], _ADC_YML),
    "poisson_scale_range": ([0.05, 2.0], _ADC_YML),
    "gray_noise_prob": (0.4, _ADC_YML),
    "jpeg_range": ([60, 95], _ADC_YML),
    "second_order_prob": (1.0, f"{_ADC_PY} (second stage always runs)"),
    "second_blur_prob": (0.5, _ADC_YML),
    "kernel_list2": (FAMILIES, _ADC_YML),
    "kernel_prob2": (FAMILY_PROBS, _ADC_YML),
    # config.yml says blur_kernel_size2: 11, but dataset.py never reads it for the size draw
    "kernel_range2": (SIZES_7_21, f"{_ADC_PY} (same hard-coded kernel_range; blur_kernel_size2 unused)"),
    "sinc_prob2": (0.1, _ADC_YML),
    "blur_sigma2": ([0.2, 1.0], _ADC_YML),
    "betag_range2": ([0.5, 2.0], _ADC_YML),
    "betap_range2": ([1.0, 1.5], _ADC_YML),
    "resize_prob2": ([0.3, 0.4, 0.3], _ADC_YML),
    "resize_range2": ([0.6, 1.2], _ADC_YML),
    "gaussian_noise_prob2": (0.5, _ADC_YML),
    "noise_range2": ([1.0, 12.0], _ADC_YML),
    "poisson_scale_range2": ([0.05, 1.0], _ADC_YML),
    "gray_noise_prob2": (0.4, _ADC_YML),
    "jpeg_range2": ([60, 100], _ADC_YML),
    "final_sinc_prob": (0.8, _ADC_YML),
    "final_kernel_range": (SIZES_7_21, _ADC_PY),
    "final_omega_range": ([math.pi / 3, math.pi], _ADC_PY),
    "final_resize_first_prob": (0.5, f"{_ADC_PY} (np.random.uniform() < 0.5)"),
}

_RS_YML = "configs/realsr_swinunet_realesrgan256_journal.yaml"
_RS_DATA = "basicsr/data/realesrgan_dataset.py"
_RS_TRAIN = "trainer.py (prepare_data)"
RESSHIFT = {
    "gt_size": (256, f"{_RS_YML} (degradation.gt_size)"),
    "usm": (False, f"{_RS_YML} (use_sharp: False)"),
    "resize_back": (False, _RS_YML),
    "kernel_list": (FAMILIES, _RS_YML),
    "kernel_prob": (FAMILY_PROBS, _RS_YML),
    # range(3, blur_kernel_size, 2) with blur_kernel_size 21: the end is left out
    "kernel_range": (list(range(3, 21, 2)), f"{_RS_DATA} (range(3, blur_kernel_size=21, 2))"),
    "sinc_prob": (0.1, _RS_YML),
    "blur_sigma": ([0.2, 3.0], _RS_YML),
    "betag_range": ([0.5, 4.0], _RS_YML),
    "betap_range": ([1.0, 2.0], _RS_YML),
    "resize_prob": ([0.2, 0.7, 0.1], _RS_YML),
    "resize_range": ([0.15, 1.5], _RS_YML),
    "gaussian_noise_prob": (0.5, _RS_YML),
    "noise_range": ([1.0, 30.0], _RS_YML),
    "poisson_scale_range": ([0.05, 3.0], _RS_YML),
    "gray_noise_prob": (0.4, _RS_YML),
    "jpeg_range": ([30, 95], _RS_YML),
    "second_order_prob": (0.5, _RS_YML),
    "second_blur_prob": (0.8, _RS_YML),
    "kernel_list2": (FAMILIES, _RS_YML),
    "kernel_prob2": (FAMILY_PROBS, _RS_YML),
    "kernel_range2": (list(range(3, 15, 2)), f"{_RS_DATA} (range(3, blur_kernel_size2=15, 2))"),
    "sinc_prob2": (0.1, _RS_YML),
    "blur_sigma2": ([0.2, 1.5], _RS_YML),
    "betag_range2": ([0.5, 4.0], _RS_YML),
    "betap_range2": ([1.0, 2.0], _RS_YML),
    "resize_prob2": ([0.3, 0.4, 0.3], _RS_YML),
    "resize_range2": ([0.3, 1.2], _RS_YML),
    "gaussian_noise_prob2": (0.5, _RS_YML),
    "noise_range2": ([1.0, 25.0], _RS_YML),
    "poisson_scale_range2": ([0.05, 2.5], _RS_YML),
    "gray_noise_prob2": (0.4, _RS_YML),
    "jpeg_range2": ([30, 95], _RS_YML),
    "final_sinc_prob": (0.8, _RS_YML),
    "final_kernel_range": (list(range(3, 15, 2)), f"{_RS_DATA} (final sinc size from kernel_range2)"),
    "final_omega_range": ([math.pi / 3, math.pi], _RS_DATA),
    "final_resize_first_prob": (0.5, f"{_RS_TRAIN} (random.random() < 0.5)"),
}

SOURCES = {"realesrgan-x4plus": REALESRGAN_X4PLUS, "osediff": OSEDIFF, "adcsr-mild": ADCSR, "resshift": RESSHIFT}


def _expected_fields(src: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """Our dotted config fields with the value the source option implies (and the option's name)."""
    v = {k: val for k, (val, _) in src.items()}
    out: dict[str, Any] = {
        "scale": 4,
        "hr_size": v["gt_size"],
        "usm.enabled": v["usm"],
        "second_order_prob": v["second_order_prob"],
        "second.blur_prob": v["second_blur_prob"],
        "first.blur_prob": 1.0,  # the first blur always runs in every source
        "final.sinc_prob": v["final_sinc_prob"],
        "final.sinc_kernel_sizes": v["final_kernel_range"],
        "final.sinc_omega_range": v["final_omega_range"],
        "final.resize_then_jpeg_prob": v["final_resize_first_prob"],
        "final.resize_modes": ["area", "bilinear", "bicubic"],
    }
    for stage, sfx in (("first", ""), ("second", "2")):
        out[f"{stage}.blur.kernel_sizes"] = v[f"kernel_range{sfx}"]
        out[f"{stage}.blur.family_probs"] = dict(zip(v[f"kernel_list{sfx}"], v[f"kernel_prob{sfx}"]))
        out[f"{stage}.blur.sigma_range"] = v[f"blur_sigma{sfx}"]
        out[f"{stage}.blur.betag_range"] = v[f"betag_range{sfx}"]
        out[f"{stage}.blur.betap_range"] = v[f"betap_range{sfx}"]
        out[f"{stage}.blur.sinc_prob"] = v[f"sinc_prob{sfx}"]
        lo, hi = v[f"resize_range{sfx}"]
        out[f"{stage}.resize.probs"] = v[f"resize_prob{sfx}"]
        out[f"{stage}.resize.up_range"] = [1.0, hi]  # up: U(1, resize_range[1])
        out[f"{stage}.resize.down_range"] = [lo, 1.0]  # down: U(resize_range[0], 1)
        out[f"{stage}.resize.modes"] = ["area", "bilinear", "bicubic"]
        out[f"{stage}.noise.gaussian_prob"] = v[f"gaussian_noise_prob{sfx}"]
        out[f"{stage}.noise.sigma_range"] = v[f"noise_range{sfx}"]
        out[f"{stage}.noise.poisson_scale_range"] = v[f"poisson_scale_range{sfx}"]
        out[f"{stage}.noise.gray_prob"] = v[f"gray_noise_prob{sfx}"]
        # stage 2's JPEG range is the final JPEG's (jpeg_range2), as in every source
        out[f"{stage}.jpeg.quality_range"] = v[f"jpeg_range{sfx}"]
    return out


def _get(cfg_dict: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg_dict
    for part in dotted.split("."):
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)
    return a == b


def test_every_bundled_preset_has_a_source_table():
    assert set(available_presets()) == set(SOURCES) == set(REPOS)
    for name, src in SOURCES.items():
        assert all(isinstance(f, str) and f for _, f in src.values()), name


@pytest.mark.parametrize("preset", sorted(SOURCES))
def test_preset_fields_equal_the_source(preset):
    cfg = load_preset(preset).to_dict()
    wrong = {
        field: {"preset": _get(cfg, field), "source": want}
        for field, want in _expected_fields(SOURCES[preset]).items()
        if not _same(_get(cfg, field), want)
    }
    assert not wrong, f"{preset} differs from {REPOS[preset]}: {wrong}"


def test_resshift_does_not_resize_back():
    # resize_back: False: the LR stays at GT // sf, which is the only LR size this chain makes
    assert RESSHIFT["resize_back"][0] is False
    cfg = load_preset("resshift")
    rec = draw_record(cfg, 0, "k", (cfg.hr_size, cfg.hr_size))
    assert rec["final"]["resize"]["size"] == [cfg.hr_size // cfg.scale] * 2


# --- drawn records stay in (and cover) the source's ranges ----------------------------------------
N = 1500


def _within(count: int, n: int, p: float, z: float = 4.5) -> bool:
    sd = math.sqrt(n * p * (1 - p)) or 1e-9
    return abs(count - n * p) <= z * sd


def _in(x: float, rng: list[float]) -> bool:
    return rng[0] - 1e-12 <= x <= rng[1] + 1e-12


@pytest.fixture(scope="module")
def drawn():
    out = {}
    for name in SOURCES:
        cfg = load_preset(name)
        out[name] = [draw_record(cfg, 13, f"s{i:05d}", (cfg.hr_size, cfg.hr_size)) for i in range(N)]
    return out


def _check_blur(blurs: list[dict[str, Any]], src: dict[str, tuple[Any, str]], sfx: str) -> None:
    v = {k: val for k, (val, _) in src.items()}
    sizes = Counter(b["size"] for b in blurs)
    assert sorted(sizes) == v[f"kernel_range{sfx}"], (sfx, sorted(sizes))
    for b in blurs:
        if b["family"] == "sinc":
            lo = math.pi / 3 if b["size"] < 13 else math.pi / 5
            assert lo <= b["omega"] <= math.pi
            continue
        assert _in(b["sigma_x"], v[f"blur_sigma{sfx}"]) and _in(b["sigma_y"], v[f"blur_sigma{sfx}"])
        if b["family"].startswith("generalized"):
            assert _in(b["beta"], v[f"betag_range{sfx}"]), b
        if b["family"].startswith("plateau"):
            assert _in(b["beta"], v[f"betap_range{sfx}"]), b
    betas_g = [b["beta"] for b in blurs if b["family"].startswith("generalized")]
    hi = v[f"betag_range{sfx}"][1]
    assert max(betas_g) > 1 + 0.8 * (hi - 1)  # the upper end is reached, not a narrower range


def _check_noise(noises: list[dict[str, Any]], src: dict[str, tuple[Any, str]], sfx: str) -> None:
    v = {k: val for k, (val, _) in src.items()}
    for n in noises:
        if n["type"] == "gaussian":
            assert _in(n["sigma"], v[f"noise_range{sfx}"])
        else:
            assert _in(n["scale"], v[f"poisson_scale_range{sfx}"])
    scales = [n["scale"] for n in noises if n["type"] == "poisson"]
    lo, hi = v[f"poisson_scale_range{sfx}"]
    assert max(scales) > lo + 0.9 * (hi - lo)
    assert _within(sum(n["type"] == "gaussian" for n in noises), len(noises), v[f"gaussian_noise_prob{sfx}"])


@pytest.mark.parametrize("preset", sorted(SOURCES))
def test_drawn_records_hold_the_source_ranges(preset, drawn):
    src, recs = SOURCES[preset], drawn[preset]
    v = {k: val for k, (val, _) in src.items()}
    _check_blur([r["first"]["blur"] for r in recs], src, "")
    _check_noise([r["first"]["noise"] for r in recs], src, "")
    q1 = [r["first"]["jpeg"]["quality"] for r in recs]
    assert [min(q1), max(q1)] == v["jpeg_range"]
    for r in recs:
        res = r["first"]["resize"]
        lo, hi = v["resize_range"]
        assert _in(res["factor"], {"up": [1, hi], "down": [lo, 1], "keep": [1, 1]}[res["direction"]])

    applied = [r["second"] for r in recs if r["second"]["applied"]]
    assert _within(len(applied), N, v["second_order_prob"])
    blurs2 = [s["blur"] for s in applied if s["blur"] is not None]
    assert _within(len(blurs2), len(applied), v["second_blur_prob"])
    _check_blur(blurs2, src, "2")
    _check_noise([s["noise"] for s in applied], src, "2")
    for s in applied:
        lo, hi = v["resize_range2"]
        assert _in(s["resize"]["factor"], {"up": [1, hi], "down": [lo, 1], "keep": [1, 1]}[s["resize"]["direction"]])

    q2 = [r["final"]["jpeg"]["quality"] for r in recs]
    assert [min(q2), max(q2)] == v["jpeg_range2"]
    sincs = [r["final"]["sinc"] for r in recs if r["final"]["sinc"] is not None]
    assert _within(len(sincs), N, v["final_sinc_prob"])
    assert sorted({s["size"] for s in sincs}) == v["final_kernel_range"]
    assert all(_in(s["omega"], v["final_omega_range"]) for s in sincs)
    assert all(r["final"]["resize"]["size"] == [v["gt_size"] // 4] * 2 for r in recs)
    assert all((r["usm"] is not None) == v["usm"] for r in recs)


# --- the second-order coin (resshift) -------------------------------------------------------------
def _photos(n: int, size: int) -> torch.Tensor:
    imgs = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    crops = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        y, x = (23 * i) % (img.shape[0] - size), (31 * i) % (img.shape[1] - size)
        crops.append(img[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


KEYS = [f"m{i}" for i in range(8)]


@pytest.fixture(scope="module")
def mixed():
    """A resshift batch with stage 2 on for some samples and off for others."""
    hr = _photos(len(KEYS), 96)
    lr, recs = Degrader(load_preset("resshift"))(hr, keys=KEYS, seed=21)
    flags = [r["second"]["applied"] for r in recs]
    assert any(flags) and not all(flags), flags  # the fixed keys give a mixed batch
    return hr, lr, recs


def test_the_coin_is_its_own_stream_and_changes_no_other_draw():
    half = load_preset("resshift")
    on, off = half.replace(second_order_prob=1.0), half.replace(second_order_prob=0.0)
    for i in range(200):
        key = f"c{i}"
        r = draw_record(half, 4, key, (256, 256))
        r_on, r_off = draw_record(on, 4, key, (256, 256)), draw_record(off, 4, key, (256, 256))
        assert r["first"] == r_on["first"] == r_off["first"]
        assert r["final"]["order"] == r_on["final"]["order"] and r["final"]["sinc"] == r_on["final"]["sinc"]
        assert r["final"]["jpeg"] == r_on["final"]["jpeg"] and r["final"]["resize"]["mode"] == r_on["final"]["resize"]["mode"]
        assert r["second"] == (r_on["second"] if r["second"]["applied"] else r_off["second"])
        assert r_off["second"] == {"applied": False}


def test_stage_two_is_skipped_per_sample_within_a_batch(mixed):
    hr, lr, recs = mixed
    half = load_preset("resshift")
    lr_on, _ = Degrader(half.replace(second_order_prob=1.0))(hr, keys=KEYS, seed=21)
    lr_off, _ = Degrader(half.replace(second_order_prob=0.0))(hr, keys=KEYS, seed=21)
    for i, rec in enumerate(recs):
        same_as, other = (lr_on, lr_off) if rec["second"]["applied"] else (lr_off, lr_on)
        assert torch.equal(lr[i], same_as[i]), (i, rec["second"]["applied"])
        assert not torch.equal(lr[i], other[i])  # stage 2 changes pixels, so the check can fail
        alone, _ = Degrader(half)(hr[i : i + 1], keys=[KEYS[i]], seed=21)
        assert torch.equal(alone[0], lr[i])


def test_replay_reproduces_skipped_and_applied_samples(mixed):
    hr, lr, recs = mixed
    for i, rec in enumerate(recs):
        assert torch.equal(replay(hr[i : i + 1], json.loads(json.dumps(rec))), lr[i : i + 1])
    lines = [describe_record(r).splitlines()[1] for r in recs]
    assert all((line == "2: skipped") != r["second"]["applied"] for line, r in zip(lines, recs))


def test_second_order_prob_is_validated():
    from pairforge.degradations import ConfigError

    with pytest.raises(ConfigError, match="^second_order_prob"):
        load_preset("resshift", second_order_prob=1.5)


# --- pins: what existing datasets depend on -------------------------------------------------------
#: Computed on the code before the resshift preset and the adcsr-mild fix; must never move.
PINNED_FINGERPRINTS = {
    "realesrgan-x4plus": "de47c18dd0cbd70ac8dd647e77c674ae67726fe9e4291174f76021ed3847d1bf",
    "osediff": "a7ce65769df0f14d1b3629e51e69c9bc75cdb4827ff462583ca35c6f3dad9aa4",
}
PINNED_RECORD_SHA = "cf3474efb778b56ed2431ddc0c6f2837d460d18c752e425b79768775d1871559"
PINNED_RECORDS50_SHA = "65bf75a2da6fbfa4e91fb0ca7488746bdb5260aece8a4cb94b4a5c37a74f181a"
#: LR pixels on CPU with Pillow's libjpeg; another libjpeg build may round differently.
PINNED_LR_SHA = "eb3d8a939e1e589a6965db40813995188f09676a3c18f36feb80ba8a4d213cc5"


def _canonical(rec: dict[str, Any]) -> bytes:
    """A record's JSON without ``code_version`` (a release bump changes only that field)."""
    return json.dumps({k: v for k, v in rec.items() if k != "code_version"}, sort_keys=True).encode()


@pytest.mark.parametrize("preset", sorted(PINNED_FINGERPRINTS))
def test_fingerprints_of_existing_presets_do_not_move(preset):
    assert load_preset(preset).fingerprint() == PINNED_FINGERPRINTS[preset]


def test_realesrgan_x4plus_records_and_pixels_do_not_move():
    cfg = load_preset("realesrgan-x4plus")
    img = data.astronaut()[100:356, 150:406]
    hr = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).contiguous()
    lr, (rec,) = Degrader(cfg)(hr, keys=["pin0"], seed=2024)
    assert rec["second"]["applied"] is True  # default configs keep the field as it always was
    assert hashlib.sha256(_canonical(rec)).hexdigest() == PINNED_RECORD_SHA
    assert hashlib.sha256(lr.numpy().tobytes()).hexdigest() == PINNED_LR_SHA
    recs = [draw_record(cfg, 2024, f"k{i}", (256, 256)) for i in range(50)]
    blob = b"\n".join(_canonical(r) for r in recs)
    assert hashlib.sha256(blob).hexdigest() == PINNED_RECORDS50_SHA
