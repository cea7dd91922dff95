"""PSNR/SSIM on Y (training/model/metrics.py) against an independent numpy/OpenCV implementation written
from BasicSR's definition of ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True``;
the trainer's validation numbers unchanged; the published-results table well formed."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pairforge.training.model.metrics import crop_border, psnr_y, ssim_y
from pairforge.training.model.published import DATASETS, METRICS, PROTOCOLS, load_published, matching, protocol_note


# ------------------------------------------------------- the reference, from BasicSR's definition
def ref_y(rgb: np.ndarray) -> np.ndarray:
    """BasicSR's ``to_y_channel`` on an image read by OpenCV (BGR): float32 /255, BT.601 luma
    ``16 + 24.966 B + 128.553 G + 65.481 R`` (float64 dot), back to float32 in [0, 1], ×255."""
    bgr = rgb[..., ::-1].astype(np.float32) / 255.0
    y = bgr @ np.array([24.966, 128.553, 65.481]) + 16.0
    return (y / 255.0).astype(np.float32) * 255.0


def ref_psnr(a: np.ndarray, b: np.ndarray, crop: int) -> float:
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    mse = np.mean((ref_y(a).astype(np.float64) - ref_y(b).astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def ref_ssim(a: np.ndarray, b: np.ndarray, crop: int) -> float:
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    x, y = ref_y(a).astype(np.float64), ref_y(b).astype(np.float64)
    g = cv2.getGaussianKernel(11, 1.5)
    win = g @ g.T

    def blur(z: np.ndarray) -> np.ndarray:  # 'valid' part of the filtered image
        return cv2.filter2D(z, -1, win)[5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(m.mean())


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255


def image_pair(seed: int, h: int = 37, w: int = 53, noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random HR and a noisy SR, uint8 RGB, odd sizes: SSIM well away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 6 + 2, w // 6 + 2, generator=g)
    hr = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    sr = (hr + noise / 255 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    def to8(t):
        return (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    return to8(sr), to8(hr)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("seed,h,w,noise", [(0, 37, 53, 12.0), (1, 53, 37, 3.0), (2, 41, 41, 40.0), (3, 29, 63, 1.0)])
@pytest.mark.parametrize("crop", [0, 1, 4])
def test_psnr_ssim_match_basicsr_definition(seed: int, h: int, w: int, noise: float, crop: int) -> None:
    sr, hr = image_pair(seed, h, w, noise)
    ours_p = float(psnr_y(as_tensor(sr), as_tensor(hr), crop)[0])
    ours_s = float(ssim_y(as_tensor(sr), as_tensor(hr), crop)[0])
    assert abs(ours_p - ref_psnr(sr, hr, crop)) < 1e-3, (ours_p, ref_psnr(sr, hr, crop))
    assert abs(ours_s - ref_ssim(sr, hr, crop)) < 1e-4, (ours_s, ref_ssim(sr, hr, crop))
    assert 0.05 < ours_s < 0.9999  # a real test of the SSIM formula, not of two constants


def test_uniform_one_level_offset_has_closed_form_psnr() -> None:
    """+1 grey level in R, G and B moves Y by (65.481 + 128.553 + 24.966)/255 = 219/255 everywhere."""
    _, hr = image_pair(4)
    hr = np.minimum(hr, 254)
    sr = hr + 1
    expected = 20 * math.log10(255 / (219 / 255))
    assert float(psnr_y(as_tensor(sr), as_tensor(hr), 4)[0]) == pytest.approx(expected, abs=1e-6)  # k/255 held in float32
    assert ref_psnr(sr, hr, 4) == pytest.approx(expected, abs=1e-3)


def test_border_crop_equals_scoring_the_cropped_images() -> None:
    sr, hr = image_pair(5)
    x, y = as_tensor(sr), as_tensor(hr)
    for n in (1, 3, 7):
        inner = (x[..., n:-n, n:-n], y[..., n:-n, n:-n])
        assert torch.equal(psnr_y(x, y, n), psnr_y(*inner, 0))
        assert torch.equal(ssim_y(x, y, n), ssim_y(*inner, 0))
    # the crop changes the score: the border is not ignored by accident
    assert float(psnr_y(x, y, 0)[0]) != float(psnr_y(x, y, 4)[0])
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr_y(x, y, 19)  # 37 rows − 2·19 < 1
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_y(x, y, 14)  # 37 − 28 = 9 rows left
    with pytest.raises(ValueError, match=">= 0"):
        crop_border(x, -1)


def test_float_inputs_are_scored_as_8_bit_and_batches_per_image() -> None:
    a, b = image_pair(6), image_pair(7)
    x = torch.cat([as_tensor(a[0]), as_tensor(b[0])])
    y = torch.cat([as_tensor(a[1]), as_tensor(b[1])])
    jitter = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(8)) - 0.5) * 0.9 / 255
    assert torch.equal(psnr_y(jitter, y), psnr_y(x, y))  # within half a level: the same 8-bit image
    batch = ssim_y(x, y, 4)
    assert batch.shape == (2,)
    assert float(batch[1]) == pytest.approx(ref_ssim(b[0], b[1], 4), abs=1e-4)


def _old_validation_psnr_ssim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """training/loop/validation.py's PSNR/SSIM before they moved to training/model/metrics.py (verbatim formulas)."""
    def to_y(t: torch.Tensor) -> torch.Tensor:
        w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64).view(1, 3, 1, 1)
        return (t.double() * w).sum(1, keepdim=True) + 16.0

    x, y = (x * 255).round() / 255, (y * 255).round() / 255
    a, b = to_y(x), to_y(y)
    psnr = 10 * torch.log10(255.0 ** 2 / ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10))
    g = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(g ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).view(1, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    s_aa, s_bb = F.conv2d(a * a, k) - mu_a ** 2, F.conv2d(b * b, k) - mu_b ** 2
    s_ab = F.conv2d(a * b, k) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return psnr, m.mean(dim=(1, 2, 3))


def test_trainer_validation_numbers_unchanged() -> None:
    """The trainer's validation (crop 0) gives bit-identical sums to its formulas before the move."""
    from pairforge.training.loop.validation import metric_sums

    g = torch.Generator().manual_seed(9)
    hr = torch.rand(3, 3, 33, 47, generator=g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    psnr, ssim = _old_validation_psnr_ssim(sr, hr)
    sums = metric_sums(sr, hr, {})
    assert sums == {"psnr": float(psnr.sum()), "ssim": float(ssim.sum())}


# ------------------------------------------------------------------------- published results
def test_published_table_is_well_formed_and_matches_by_dataset_and_protocol() -> None:
    rows = load_published()
    assert {r.method for r in rows} >= {"D3SR", "OSEDiff", "AdcSR", "TAD-SR"}
    assert any(r.method.startswith("SinSR") for r in rows)
    for r in rows:
        assert r.source.strip() and r.metrics and set(r.metrics) <= set(METRICS)
        assert r.dataset in DATASETS
    # numbers as collected in the methods digest (spot checks)
    d3sr = {(r.dataset, r.protocol): r.metrics for r in rows if r.method == "D3SR"}
    assert d3sr[("RealSR", "whole-image")]["psnr_y"] == 24.11 and d3sr[("DIV2K-val", "whole-image")]["dists"] == 0.15
    ose = matching("DRealSR", "stablesr-crops")
    assert [r.method for r in ose][:1] == ["OSEDiff"] and ose[0].metrics["fid"] == 135.30
    # whole-image and crop rows never mix; no protocol or no dataset → nothing
    assert all(r.protocol == "whole-image" for r in matching("RealSR", "whole-image"))
    assert "D3SR" not in {r.method for r in matching("RealSR", "stablesr-crops")}
    assert matching("RealSR", None) == [] and matching(None, "whole-image") == []
    assert all(r.protocol != "unknown" for p in PROTOCOLS for d in DATASETS for r in matching(d, p))
    assert "crop_border 0" in protocol_note("stablesr-crops")
