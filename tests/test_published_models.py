"""Published SR checkpoints beside pairforge's own models, in ``upscale`` and ``eval``.

The checkpoints are state dicts of each supported family built by spandrel's own architecture
classes (small configs, random weights): what a user's Real-ESRGAN/ESRGAN ``.pth``, Real-ESRGAN
compact ``.safetensors``, SwinIR or HAT file holds, minus the training. Checked: recognition and
scale, tiled output equal to untiled within a stated tolerance, one table for several models on
the same pairs, one-line refusals (another scale, a file that is no model, a pickle with code —
which is never run).
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pairforge.clusters.cli import main
from pairforge.training.model.sr_models import ModelFileError, PublishedModel, load_model

pytestmark = pytest.mark.timeout(300)
PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]


def _esrgan(scale: int):
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=scale)


def _compact(scale: int):
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    return SRVGGNetCompact(num_feat=16, num_conv=2, upscale=scale)


def _swinir(scale: int):
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(upscale=scale, img_size=32, window_size=8, embed_dim=24, depths=[2], num_heads=[2], mlp_ratio=2,
                  upsampler="pixelshuffle", resi_connection="1conv")


def _hat(scale: int):
    from spandrel.architectures.HAT import HAT

    return HAT(upscale=scale, img_size=32, window_size=8, embed_dim=24, depths=(2,), num_heads=(2,),
               num_feat=16, squeeze_factor=8, mlp_ratio=2)


#: family → (builder, the architecture name spandrel reports, how the file is saved,
#:           tolerance of tiled vs untiled: mean |Δ| over the image, in [0, 1] units)
FAMILIES = {
    "esrgan": (_esrgan, "ESRGAN", "pth", 1e-3),
    "compact": (_compact, "RealESRGAN Compact", "safetensors", 1e-3),
    "swinir": (_swinir, "SwinIR", "pth-params", 1e-2),
    "hat": (_hat, "HAT", "pth-params_ema", 1e-2),
}


def checkpoint(folder: Path, family: str, scale: int) -> Path:
    """A checkpoint file of ``family`` at ``scale``, saved as such files are published."""
    torch.manual_seed(0)
    build, _, how, _ = FAMILIES[family]
    state = build(scale).state_dict()
    if how == "safetensors":
        path = folder / f"{family}_x{scale}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = folder / f"{family}_x{scale}.pth"
        key = how.partition("-")[2]  # BasicSR wraps its weights: {"params": …} / {"params_ema": …}
        torch.save({key: state} if key else state, path)
    return path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_recognised_and_tiles_like_untiled(family, tmp_path):
    _, arch, _, tolerance = FAMILIES[family]
    for scale in (2, 4):
        model = load_model(checkpoint(tmp_path, family, scale), "cpu")
        assert isinstance(model, PublishedModel)
        assert (model.architecture, model.scale, model.name) == (arch, scale, f"{family}_x{scale}")
    lr = torch.rand(1, 3, 45, 58, generator=torch.Generator().manual_seed(1))
    whole = model.upscale(lr, 4, tile=0)
    tiled = model.upscale(lr, 4, tile=96, overlap=32)  # 24-px LR tiles, 8 px shared: 6 × 4 tiles
    assert whole.shape == tiled.shape == (1, 3, 180, 232)
    assert 0 <= float(whole.min()) and float(whole.max()) <= 1
    assert float((whole - tiled).abs().mean()) < tolerance
    with pytest.raises(ModelFileError, match="×4 model, asked for ×2"):
        model.upscale(lr, 2)


def test_files_that_are_no_model_are_refused_in_one_line(tmp_path):
    not_sr = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_sr)
    with pytest.raises(ModelFileError, match="no super-resolution architecture"):
        load_model(not_sr, "cpu")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelFileError, match="not a checkpoint of plain tensors"):
        load_model(text, "cpu")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a readable checkpoint"):
        load_model(junk, "cpu")
    with pytest.raises(ModelFileError, match="not a model"):
        load_model(Path(__file__), "cpu")
    with pytest.raises(ModelFileError, match="no such folder or file"):
        load_model(tmp_path / "missing.pth", "cpu")


class _Payload:
    """Unpickling this would run ``Path.touch`` on the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"params": _Payload(marker)}, f)
    with pytest.raises(ModelFileError, match="nothing is unpickled"):
        load_model(evil, "cpu")
    assert not marker.exists()


# ------------------------------------------------------------------ through the commands
@pytest.fixture
def pairs(tmp_path) -> Path:
    """3 LR/HR pairs (×4) named alike, from the bundled photos."""
    from skimage import data

    root = tmp_path / "pairs"
    (root / "hr").mkdir(parents=True)
    (root / "lr").mkdir()
    for name, img in (("coffee", data.coffee()), ("chelsea", data.chelsea()), ("rocket", data.rocket())):
        hr = Image.fromarray(img[:96, :128])
        hr.save(root / "hr" / f"{name}.png")
        hr.resize((32, 24), Image.BICUBIC).save(root / "lr" / f"{name}.png")
    return root


def test_eval_puts_several_models_in_one_table(pairs, tmp_path, weights_dir):
    from pairforge.training.config import load_config
    from pairforge.training.model.networks import build_generator

    build_generator(load_config(preset="tiny").generator, seed=3).eval().export(
        tmp_path / "run7" / "export", base="tiny(seed=3)", lora_on_base=True)
    esrgan, compact = checkpoint(tmp_path, "esrgan", 4), checkpoint(tmp_path, "compact", 4)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(esrgan), "--model", str(tmp_path / "run7" / "export"),
                 "--model", str(compact), "--model", "bicubic", "--name", "Real-ESRGAN (random)",
                 "--lr", str(pairs / "lr"), "--hr", str(pairs / "hr"), "--out", str(out),
                 "--weights", str(weights_dir), "--device", "cpu", "--no-fid"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["bicubic", "Real-ESRGAN (random)", "run7", "compact_x4"]
    per_image = (out / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 3 * 4  # every model on the same 3 pairs
    assert len({r["psnr_y"] for r in doc["rows"]}) == 4  # four different outputs were scored
    table = (out / "table.md").read_text()
    assert all(f"| {name} |" in table for name in ("bicubic", "Real-ESRGAN (random)", "run7", "compact_x4"))


def test_eval_refuses_a_model_of_another_scale(pairs, tmp_path, weights_dir, capsys):
    x2 = checkpoint(tmp_path, "compact", 2)
    rc = main(["eval", "--model", str(x2), "--lr", str(pairs / "lr"), "--hr", str(pairs / "hr"),
               "--out", str(tmp_path / "e"), "--weights", str(weights_dir), "--device", "cpu", "--no-fid"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "compact_x2 x2" in err[0] and "images x4" in err[0], err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_upscale_with_a_checkpoint(pairs, tmp_path):
    ckpt = checkpoint(tmp_path, "esrgan", 4)
    run = subprocess.run([*PAIRFORGE, "upscale", str(pairs / "lr"), str(tmp_path / "sr"), "--model", str(ckpt),
                          "--tile", "64", "--color-fix", "wavelet", "--device", "cpu"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("coffee", "chelsea", "rocket"):
        assert np.asarray(Image.open(tmp_path / "sr" / f"{name}.png")).shape == (96, 128, 3)
    assert "Warning" not in run.stderr, run.stderr  # no third-party noise


def test_upscale_refuses_another_scale_and_a_file_that_is_no_model(pairs, tmp_path, capsys):
    ckpt = checkpoint(tmp_path, "esrgan", 4)
    assert main(["upscale", str(pairs / "lr" / "coffee.png"), str(tmp_path / "x.png"), "--model", str(ckpt),
                 "--scale", "2", "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "×4 model; it cannot upscale ×2" in lines[0], lines
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert main(["upscale", str(pairs / "lr" / "coffee.png"), str(tmp_path / "y.png"), "--model", str(junk),
                 "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not a readable checkpoint" in lines[0], lines
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
