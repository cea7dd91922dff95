"""`pairforge degrade`: previews the same bundled photos the pipeline lists, or a folder's images."""
from __future__ import annotations

import json

from PIL import Image

from pairforge.clusters.cli import main
from pairforge.pipeline.sources import bundled_photos, list_bundled


def keys(out) -> list[str]:
    return [json.loads(line)["key"] for line in (out / "records.jsonl").read_text().splitlines()]


def test_bundled_preview_uses_the_pipeline_listing(tmp_path, capsys):
    assert [name for name, _ in bundled_photos()] == [it.name for it in list_bundled().items]
    assert main(["degrade", "--out", str(tmp_path), "--limit", "2", "--preset", "realesrgan-x4plus"]) == 0
    first_two = [name.rsplit(".", 1)[0] for name, _ in bundled_photos()[:2]]
    assert keys(tmp_path) == first_two
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.format == "PNG"


def test_folder_preview_crops_to_the_size_and_names_the_small_images(tmp_path, photo_dir, capsys):
    out = tmp_path / "out"
    assert main(["degrade", "--source", str(photo_dir), "--out", str(out), "--limit", "3",
                 "--patch-size", "128"]) == 0
    files = sorted(p for p in photo_dir.iterdir() if p.is_file())
    big = [p.stem for p in files if min(Image.open(p).size) >= 128]
    assert keys(out) == big[:3]
    small = [p.name for p in files if min(Image.open(p).size) < 128 and p.stem < big[2]]
    err = capsys.readouterr().err
    assert all(name in err for name in small) and "smaller than 128 px" in err
    for key in keys(out):
        with Image.open(out / "hr" / f"{key}.png") as im:
            assert im.size == (128, 128)  # the preset's scale divides it: LR is 32 px
        with Image.open(out / "lr" / f"{key}.png") as im:
            assert im.size == (32, 32)


def test_every_record_replays_from_the_saved_hr_crop(tmp_path):
    import numpy as np
    import torch

    from pairforge.degradations import replay

    assert main(["degrade", "--out", str(tmp_path), "--limit", "2", "--patch-size", "96", "--seed", "5"]) == 0
    for line in (tmp_path / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        hr = torch.from_numpy(np.asarray(Image.open(tmp_path / "hr" / f"{record['key']}.png"))).permute(2, 0, 1)
        lr = np.asarray(Image.open(tmp_path / "lr" / f"{record['key']}.png"))
        assert np.array_equal(replay(hr[None], record)[0].permute(1, 2, 0).numpy(), lr)


def test_the_sheet_is_headed_with_preset_and_seed(tmp_path):
    """The same call with and without the header differs only in the header band."""
    import numpy as np

    from pairforge.pipeline.inspect import contact_sheet

    sample = {"key": "k", "hr": np.zeros((64, 64, 3), np.uint8), "lr": [np.zeros((16, 16, 3), np.uint8)],
              "params": {}}
    contact_sheet([sample], str(tmp_path / "a.png"))
    contact_sheet([sample], str(tmp_path / "b.png"), title="preset realesrgan-x4plus · seed 5")
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert b.shape[0] == a.shape[0] + 22 and (b[:22] < 128).any() and np.array_equal(b[22:], a)


def _degrade(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pairforge.clusters.cli", "degrade", *args],
                          capture_output=True, text=True, timeout=120)


def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path):
    """An unknown preset, a source that is not a folder, a folder without a usable image: one
    line on stderr naming the flag, exit 2, no output folder (before: a traceback or exit 1)."""
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (40, 40)).save(small / "a.png")
    out = tmp_path / "out"
    for args, needle in ((["--preset", "no-such-preset"], "--preset 'no-such-preset'"),
                         (["--source", str(tmp_path / "nope")], "does not exist"),
                         (["--source", str(small)], "no usable images")):
        res = _degrade(*args, "--out", str(out))
        assert res.returncode == 2, (args, res.stderr[-2000:])
        (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert line.startswith("pairforge degrade: error: ") and needle in line, line
        assert not out.exists()


def test_cuda_without_cuda_exits_2(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = _degrade("--device", "cuda", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "CUDA is not available" in res.stderr
    assert not (tmp_path / "out").exists()
