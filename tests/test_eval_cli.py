"""`pairforge eval` end to end: the real CLI (a subprocess, or its main() in-process), real
perceptual weights, real degradation presets, a real (tiny) exported generator.

LPIPS/DISTS golden values are the ones tests/test_perceptual.py checks (pyiqa's official scores on
its calibration images), here read back from eval's per-image CSV.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_eval_metrics import ref_psnr, ref_ssim

from pairforge.clusters.cli import main

PAPER_HEADER = "| Method | PSNR↑ | SSIM↑ | LPIPS↓ | DISTS↓ | FID↓ | NIQE↓ | MUSIQ↑ | MANIQA↑ | CLIPIQA↑ |"
PAIRFORGE = str(Path(sys.executable).with_name("pairforge"))


def _pyiqa_importable() -> bool:
    try:
        import pyiqa  # noqa: F401 - imported only to learn whether it can be
    except Exception:  # noqa: BLE001 - pyiqa missing or broken: its comparison is skipped
        return False
    return True


def _smooth(seed: int, h: int, w: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g)
    x = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def realsr_like(tmp_path: Path) -> Path:
    """RealSR's naming: HR/Canon_00k_HR.png, LR/Canon_00k_LR4.png; SR results named after the LR.
    HR sizes are odd and not multiples of 4 (mod-crop needed for the LR)."""
    root = tmp_path / "set"
    for k, (h, w) in enumerate([(69, 85), (77, 61), (65, 73)]):
        hr = _smooth(k, h, w)
        lr = F.interpolate(torch.from_numpy(hr[: h // 4 * 4, : w // 4 * 4].copy()).permute(2, 0, 1)[None].float(),
                           scale_factor=0.25, mode="area")
        _save(hr, root / "HR" / f"Canon_00{k}_HR.png")
        _save(lr[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy(), root / "LR" / f"Canon_00{k}_LR4.png")
        noise = np.random.default_rng(k).normal(0, 6, hr.shape)
        _save(np.clip(hr + noise, 0, 255).round().astype(np.uint8), root / "mysr" / f"Canon_00{k}_LR4.png")
    return root


def test_sr_hr_mode_through_the_cli(realsr_like: Path, tmp_path: Path, weights_dir: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([PAIRFORGE, "eval", "--sr", str(realsr_like / "mysr"), "--hr", str(realsr_like / "HR"),
                           "--lr", str(realsr_like / "LR"), "--out", str(out), "--weights", str(weights_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["bicubic", "mysr"]
    for r in doc["rows"]:
        assert set(r) == {"method", "psnr_y", "ssim_y", "lpips", "dists"}
        assert all(isinstance(r[k], float) for k in ("psnr_y", "ssim_y", "lpips", "dists"))
    assert doc["settings"]["crop_border"] == 4 and doc["settings"]["scale"] == 4
    # per-image CSV: every image × method, values = the BasicSR definition on the files (crop 4;
    # the HR is mod-cropped to LR × 4 because a bicubic row is asked for)
    rows = _csv(out / "per_image.csv")
    assert sorted((r["image"], r["method"]) for r in rows) == sorted(
        (f"Canon_00{k}", m) for k in range(3) for m in ("bicubic", "mysr"))
    for r in (r for r in rows if r["method"] == "mysr"):
        hr = _read(realsr_like / "HR" / f"{r['image']}_HR.png")
        sr = _read(realsr_like / "mysr" / f"{r['image']}_LR4.png")
        h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
        assert float(r["psnr_y"]) == pytest.approx(ref_psnr(sr[:h, :w], hr[:h, :w], 4), abs=1e-3)
        assert float(r["ssim_y"]) == pytest.approx(ref_ssim(sr[:h, :w], hr[:h, :w], 4), abs=1e-4)
    mean = np.mean([float(r["psnr_y"]) for r in rows if r["method"] == "mysr"])
    assert doc["rows"][1]["psnr_y"] == pytest.approx(mean, abs=1e-9)
    # the papers' column order on stdout, one line per method
    assert PAPER_HEADER in proc.stdout
    assert "| bicubic | " in proc.stdout and "| mysr | " in proc.stdout
    assert (out / "table.md").read_text().strip() == proc.stdout.strip()
    if not _pyiqa_importable():
        assert {s["metric"] for s in doc["skipped"]} == {"niqe", "musiq", "maniqa", "clipiqa", "fid"}
        assert "pip install pyiqa" in proc.stderr


def test_lpips_dists_golden_values_through_eval(tmp_path: Path, calibration: dict,
                                                weights_dir: Path) -> None:
    """Two of pyiqa's calibration pairs (512×384; a far and a near one) as SR/HR folders: eval's
    LPIPS-alex and DISTS per image equal the official scores, as in tests/test_perceptual.py."""
    names = calibration["names"]
    picked = [names.index(n) for n in ("I04", "I08")]
    for i in picked:
        for kind, folder in (("dist", "sr"), ("ref", "hr")):
            img = (calibration[kind][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            _save(img, tmp_path / folder / f"{names[i]}.png")
    out = tmp_path / "out"
    assert main(["eval", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--out", str(out),
                 "--weights", str(weights_dir), "--crop-border", "0"]) == 0
    rows = {r["image"]: r for r in _csv(out / "per_image.csv")}
    assert list(rows) == [names[i] for i in picked]
    for metric in ("lpips", "dists"):
        scores = torch.tensor([float(rows[names[i]][metric]) for i in picked])
        official = [calibration["official"][metric][i] for i in picked]
        for i, ours, text in zip(picked, scores.tolist(), official):
            tol = 0.5 * 10.0 ** -len(text.split(".")[1]) + 1e-5  # half a unit in the last printed digit
            assert abs(ours - float(text)) <= tol, f"{metric} {names[i]}: ours {ours:.6f} vs official {text}"


def _bicubic_run(args: list[str], out: Path, weights: Path) -> tuple[dict, dict[str, bytes]]:
    assert main(["eval", "--model", "bicubic", *args, "--out", str(out), "--weights", str(weights),
                 "--save-images"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    images = {str(p.relative_to(out)): _read(p).tobytes() for p in sorted((out / "images").rglob("*.png"))}
    return doc, images


def test_bicubic_row_is_reproducible_bit_for_bit(realsr_like: Path, tmp_path: Path, weights_dir: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    args = ["--lr", str(realsr_like / "LR"), "--hr", str(realsr_like / "HR"), "--crops", "1"]
    doc1, img1 = _bicubic_run(args, tmp_path / "a", weights_dir)
    doc2, img2 = _bicubic_run(args, tmp_path / "b", weights_dir)
    assert [r["method"] for r in doc1["rows"]] == ["bicubic"]
    assert doc1["rows"] == doc2["rows"] and img1 == img2
    assert len([k for k in img1 if k.startswith("images/bicubic/")]) == 3
    assert (tmp_path / "a" / "per_image.csv").read_bytes() == (tmp_path / "b" / "per_image.csv").read_bytes()
    # the saved bicubic image is torch bicubic of the LR, 8-bit; its side-by-side crop was written
    lr = torch.from_numpy(_read(realsr_like / "LR" / "Canon_000_LR4.png").copy()).permute(2, 0, 1)[None].float() / 255
    up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    want = (up[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(_read(tmp_path / "a" / "images" / "bicubic" / "Canon_000.png"), want)
    assert _read(tmp_path / "a" / "crops" / "Canon_000.png").shape[1] > 3 * 60


def test_preset_mode_is_reproducible_and_replayable(tmp_path: Path, weights_dir: Path) -> None:
    from pairforge.degradations import replay

    for k, (h, w) in enumerate([(130, 98), (97, 121)]):  # not multiples of 4: cropped first
        _save(_smooth(10 + k, h, w), tmp_path / "hr" / f"img{k}.png")
    args = ["--hr", str(tmp_path / "hr"), "--preset", "realesrgan-x4plus", "--seed", "5"]
    doc1, img1 = _bicubic_run(args, tmp_path / "a", weights_dir)
    doc2, img2 = _bicubic_run(args, tmp_path / "b", weights_dir)
    assert doc1["rows"] == doc2["rows"] and img1 == img2
    assert doc1["settings"]["preset"] == "realesrgan-x4plus" and doc1["settings"]["seed"] == 5
    assert _read(tmp_path / "a" / "images" / "hr" / "img0.png").shape == (128, 96, 3)
    # another seed draws other LR images
    doc3, img3 = _bicubic_run([*args[:-1], "6"], tmp_path / "c", weights_dir)
    assert img3["images/lr/img0.png"] != img1["images/lr/img0.png"]
    # each LR is the preset's record replayed on the (cropped) HR
    records = [json.loads(line) for line in (tmp_path / "a" / "degradation_records.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == ["img0", "img1"]
    hr = torch.from_numpy(_read(tmp_path / "a" / "images" / "hr" / "img0.png").copy()).permute(2, 0, 1)[None]
    lr = replay(hr.contiguous(), {k: v for k, v in records[0].items() if k != "image"})
    assert np.array_equal(lr[0].permute(1, 2, 0).numpy(), _read(tmp_path / "a" / "images" / "lr" / "img0.png"))


def test_dataset_mode_scores_view_0(tmp_path: Path, weights_dir: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    from pairforge.pipeline import SynthConfig, read_pairs, synth
    from pairforge.training.model.metrics import psnr_y

    for k in range(2):
        _save(_smooth(20 + k, 96, 112), tmp_path / "photos" / f"p{k}.png")
    cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 4, "patch": {"size": 64, "per_image": 1}},
                                 "run": {"executor": "inline", "progress": False}})
    res = synth(str(tmp_path / "photos"), str(tmp_path / "ds"), cfg)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["eval", "--model", "bicubic", "--data", res.url, "--out", str(out),
                 "--weights", str(weights_dir), "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()  # --json: metrics.json on one line
    assert json.loads(line) == json.loads((out / "metrics.json").read_text())
    rows = {r["image"]: r for r in _csv(out / "per_image.csv")}
    samples = list(read_pairs(res.url))
    assert sorted(rows) == sorted(str(s["key"]) for s in samples) and len(samples) == 2
    for s in samples:
        def t(a):
            return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255

        up = F.interpolate(t(s["lr"][0]), scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        assert float(rows[str(s["key"])]["psnr_y"]) == pytest.approx(float(psnr_y(up, t(s["hr"]), 4)[0]), abs=1e-9)


def test_model_mode_runs_the_export_beside_bicubic(realsr_like: Path, tmp_path: Path,
                                                   weights_dir: Path) -> None:
    from pairforge.training.config import load_config
    from pairforge.training.model.networks import build_generator

    g = build_generator(load_config(preset="tiny").generator, seed=3).eval()
    g.export(tmp_path / "run7" / "export", base="tiny(seed=3)", lora_on_base=True)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tmp_path / "run7" / "export"), "--lr", str(realsr_like / "LR"),
                 "--hr", str(realsr_like / "HR"), "--out", str(out), "--weights", str(weights_dir),
                 "--device", "cpu", "--dataset-name", "RealSR", "--protocol", "whole-image", "--limit", "2"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["bicubic", "run7"]
    assert doc["settings"]["images"] == 2
    model, bicubic = doc["rows"][1], doc["rows"][0]
    assert model["psnr_y"] != bicubic["psnr_y"]  # the generator ran (a random tiny one: worse than bicubic)
    assert {p["method"] for p in doc["published"]} == {"D3SR", "OSEDiff (in D3SR's table)"}
    table = (out / "table.md").read_text()
    assert table.index("| run7 |") < table.index("| D3SR [1]") and "arXiv 2410.04224" in table


def test_published_rows_need_dataset_and_protocol(realsr_like: Path, tmp_path: Path, weights_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    base = ["eval", "--sr", str(realsr_like / "mysr"), "--hr", str(realsr_like / "HR"), "--weights", str(weights_dir)]
    assert main([*base, "--out", str(tmp_path / "a"), "--dataset-name", "RealSR"]) == 0
    cap = capsys.readouterr()
    assert "OSEDiff" not in cap.out and "only with --protocol" in cap.err
    assert main([*base, "--out", str(tmp_path / "b"), "--dataset-name", "RealSR", "--protocol", "stablesr-crops"]) == 0
    cap = capsys.readouterr()
    doc = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert doc["settings"]["crop_border"] == 0  # as pyiqa computed those rows
    assert "| OSEDiff [1] | 25.15 | 0.7341 | 0.2921 | 0.2128 | 123.49 |" in cap.out
    assert "D3SR" not in cap.out and "Table 1" in cap.out
    assert main(["eval", "--published"]) == 0
    assert "## RealSR, protocol whole-image" in capsys.readouterr().out


def test_clear_errors(realsr_like: Path, tmp_path: Path, weights_dir: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["eval", "--hr", str(realsr_like / "HR"), "--weights", str(weights_dir), "--out", str(tmp_path / "o")]
    # a missing SR file is named
    (realsr_like / "mysr" / "Canon_001_LR4.png").unlink()
    assert main([*base, "--sr", str(realsr_like / "mysr")]) == 2
    err = capsys.readouterr().err
    assert "no SR image for 1 HR image(s): Canon_001_HR.png" in err
    # a wrong-size SR names the file and both sizes
    _save(np.zeros((10, 12, 3), np.uint8), realsr_like / "mysr" / "Canon_001_LR4.png")
    assert main([*base, "--sr", str(realsr_like / "mysr")]) == 2
    assert "Canon_001_LR4.png: SR is 12x10 but HR Canon_001_HR.png is 61x77" in capsys.readouterr().err
    # an LR that is not a ×4 partner of its HR
    _save(np.zeros((5, 5, 3), np.uint8), realsr_like / "LR" / "Canon_002_LR4.png")
    assert main([*base, "--model", "bicubic", "--lr", str(realsr_like / "LR")]) == 2
    assert "not a x4 pair" in capsys.readouterr().err
    # inputs that fit no mode
    assert main([*base, "--model", "bicubic"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.json").exists()
