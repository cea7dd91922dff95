"""One image reader, one pixel path (issue 20, item 2).

* the same odd file (transparent RGBA, 16-bit PNG, palette PNG, EXIF-rotated JPEG) gives the same
  array through ``upscale``'s read path and ``eval``'s, and the decoder's conversions (alpha over
  white, 16-bit scaled not clipped);
* a file the decoder refuses is one line and exit 2 when it is the single INPUT of ``upscale``;
* training's LR↑ (the data path) and the LR↑ the generator receives in ``upscale`` are bit-identical;
* every 8-bit writer rounds by the one rule (half to even), also on exact halves.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pairforge.training.loop.data import generator_pair
from pairforge.training.model import evaluate, inference, pixels

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- odd files
def _rgba(path: Path) -> None:
    a = np.zeros((6, 5, 4), np.uint8)
    a[..., 0] = 200  # a colour under the transparent half: must not show
    a[:3, :, 3] = 0
    a[3:, :, :3] = (10, 120, 250)
    a[3:, :, 3] = 255
    Image.fromarray(a, "RGBA").save(path)


def _png16(path: Path) -> None:
    a = np.full((4, 7), 40000, np.uint16)
    a[0, 0] = 65535
    Image.fromarray(a).save(path)  # mode I;16


def _palette(path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).quantize(colors=6).save(path)


def _exif_jpeg(path: Path) -> None:
    rgb = np.zeros((8, 16, 3), np.uint8)
    rgb[:, :8] = (250, 20, 20)  # red left half, blue right half, stored sideways
    rgb[:, 8:] = (20, 20, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates 90° clockwise
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())


ODD = {"rgba.png": _rgba, "gray16.png": _png16, "palette.png": _palette, "rotated.jpg": _exif_jpeg}


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("odd")
    for name, make in ODD.items():
        make(folder / name)
    return {name: folder / name for name in ODD}


def _upscale_reads(path: Path) -> torch.Tensor:
    """What ``pairforge upscale`` feeds the generator for ``path`` (its _upscale_one calls this)."""
    return inference.read_image(path)


@pytest.mark.parametrize("name", sorted(ODD))
def test_upscale_and_eval_read_the_same_pixels(odd_files, name):
    up = _upscale_reads(odd_files[name])
    ev = evaluate.read_image(odd_files[name])
    assert up.shape == (1, 3, *ev.shape[:2])
    assert torch.equal(up, pixels.to_float(ev)[None])  # the same float input, bit for bit
    assert np.array_equal(pixels.to_uint8(up), ev)


def test_the_decoders_conversions_reach_upscale(odd_files):
    rgba = pixels.to_uint8(_upscale_reads(odd_files["rgba.png"]))
    assert (rgba[:3] == 255).all(), "transparent pixels are composited over white"
    assert (rgba[3:] == (10, 120, 250)).all()
    g16 = pixels.to_uint8(_upscale_reads(odd_files["gray16.png"]))
    assert g16[1, 1].tolist() == [156] * 3, "a 16-bit 40000 is scaled (40000·255/65535), not clipped to 255"
    assert g16[0, 0].tolist() == [255] * 3
    rot = pixels.to_uint8(_upscale_reads(odd_files["rotated.jpg"]))
    assert rot.shape == (16, 8, 3), "EXIF orientation 6 applied: upright is 16 tall, 8 wide"
    assert rot[2, 4, 0] > 200 and rot[13, 4, 2] > 200, "red on top, blue below after the rotation"


def test_one_list_of_image_extensions():
    from pairforge.pipeline.sources import IMAGE_EXTS

    assert pixels.IMAGE_EXTS is IMAGE_EXTS
    for ext in IMAGE_EXTS:
        assert pixels.is_image_name("x" + ext.upper())
    assert not pixels.is_image_name(".hidden.png") and not pixels.is_image_name("notes.txt")


# --------------------------------------------------------------------------- refused files: one line
def _fake_export(tmp_path: Path) -> Path:
    """A folder that passes the export check (scale recorded); a refused INPUT is found before any
    model would load from it."""
    export = tmp_path / "export"
    export.mkdir()
    (export / pixels.EXPORT_META).write_text(json.dumps({"scale": 4}))
    return export


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("content, reason", [(_truncated_png(), "corrupt"), (b"<html>404</html>", "not_an_image")])
def test_upscale_single_unreadable_input_is_one_line_exit_2(tmp_path, capsys, content, reason):
    from pairforge.clusters.cli import main

    bad = tmp_path / "photo.png"
    bad.write_bytes(content)
    rc = main(["upscale", str(bad), str(tmp_path / "out.png"), "--model", str(_fake_export(tmp_path)),
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot read {bad}: {reason}" in err
    assert not (tmp_path / "out.png").exists()


def test_eval_unreadable_input_is_one_line_exit_2(tmp_path, capsys):
    from pairforge.clusters.cli import main

    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir(), hr.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(hr / "a.png")
    (sr / "a.png").write_bytes(_truncated_png())
    rc = main(["eval", "--sr", str(sr), "--hr", str(hr), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and f"cannot read {sr / 'a.png'}: corrupt" in err


def test_export_scale_one_failure_message(tmp_path):
    with pytest.raises(pixels.ExportError, match=r"is not a generator export \(no pairforge_generator.json"):
        pixels.export_scale(tmp_path)
    (tmp_path / pixels.EXPORT_META).write_text("{not json")
    with pytest.raises(pixels.ExportError, match="unreadable"):
        pixels.export_scale(tmp_path)
    (tmp_path / pixels.EXPORT_META).write_text(json.dumps({"scale": 2}))
    assert pixels.export_scale(tmp_path) == 2


# --------------------------------------------------------------------------- LR↑: training's == inference's
def _tiny_generator():
    from pairforge.training.model.networks.backbones import default_scheduler, tiny_unet, tiny_vae
    from pairforge.training.model.networks.generator import OneStepGenerator

    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae, unet = tiny_vae(), tiny_unet()
    prompt = torch.zeros(1, 1, unet.config.cross_attention_dim)
    return OneStepGenerator(vae, unet, default_scheduler(), 399, prompt, learnable_prompt=False).eval()


def _generator_input(monkeypatch, gen, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR↑ that ``upscale_tensor`` hands the generator's encoder (untiled: one call)."""
    seen: list[torch.Tensor] = []
    encoder = inference._encoder

    def recording(g):
        stage = encoder(g)

        def run(x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().cpu().clone())
            return stage(x)
        return run

    monkeypatch.setattr(inference, "_encoder", recording)
    inference.upscale_tensor(gen, lr, scale, tile=0, vae_tile=0, bf16=False)
    assert len(seen) == 1
    h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
    return seen[0][0, :, :h, :w]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_training_and_inference_lr_up_are_bit_identical(monkeypatch, tmp_path, device):
    rng = np.random.default_rng(3)
    scale = 4
    lr = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (13 * scale, 11 * scale, 3), dtype=np.uint8)
    trained = generator_pair({"hr": pixels.to_float(hr), "lr": pixels.to_float(lr), "key": "k"})["lr_up"]

    Image.fromarray(lr).save(tmp_path / "lr.png")
    gen = _tiny_generator().to(device)
    inferred = _generator_input(monkeypatch, gen, inference.read_image(tmp_path / "lr.png"), scale)
    assert inferred.dtype == trained.dtype == torch.float32
    assert torch.equal(inferred, trained), f"max |Δ| {(inferred - trained).abs().max().item()}"
    assert np.array_equal(evaluate.bicubic_upscale(lr, scale), pixels.to_uint8(trained)), "eval's bicubic row"


# --------------------------------------------------------------------------- one rounding rule
def _exact_halves() -> torch.Tensor:
    """Float32 values v with v·255 == k + ½ exactly, for even and odd k (where the rules differ)."""
    k = torch.arange(0, 255, dtype=torch.float64)
    v = ((k + 0.5) / 255).float()
    exact = (v * 255) == (k + 0.5).float()
    v = v[exact]
    assert len(v) > 20 and bool(((v * 255 - 0.5) % 2 == 0).any())
    return v


def test_every_8bit_writer_rounds_half_to_even(tmp_path):
    from pairforge.training.loop.logging_utils import save_png
    from pairforge.training.model.metrics import quantize

    v = _exact_halves()
    img = v.view(1, 1, -1).expand(3, 1, -1).contiguous()  # (3, 1, n)
    expect = torch.round(v * 255).to(torch.uint8).numpy()  # half to even: 0.5 → 0, 1.5 → 2 …
    written = {
        "pixels.to_uint8 (eval's SR and bicubic rows)": pixels.to_uint8(img)[0, :, 0],
        "metrics.quantize": (quantize(v) * 255).round().to(torch.uint8).numpy(),
    }
    inference.write_image(img[None], tmp_path / "upscale.png")
    written["inference.write_image (pairforge upscale)"] = np.asarray(Image.open(tmp_path / "upscale.png"))[0, :, 0]
    save_png(img, tmp_path / "grid.png")
    written["logging_utils.save_png (training grids, demo)"] = np.asarray(Image.open(tmp_path / "grid.png"))[0, :, 0]
    for who, got in written.items():
        assert np.array_equal(got, expect), f"{who} rounds exact halves differently"


def test_to_float_and_to_uint8_round_trip():
    a = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    a.setflags(write=False)  # decoded arrays may be read-only; to_float must not share or warn
    x = pixels.to_float(a)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and float(x.max()) == 1.0
    assert np.array_equal(pixels.to_uint8(x), a) and np.array_equal(pixels.to_uint8(x[None]), a)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    assert np.array_equal(pixels.decode_bytes(buf.getvalue(), "mem.png"), a)
