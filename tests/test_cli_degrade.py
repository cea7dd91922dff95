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


def test_folder_preview_skips_small_images(tmp_path, photo_dir):
    out = tmp_path / "out"
    assert main(["degrade", "--source", str(photo_dir), "--out", str(out), "--limit", "3"]) == 0
    big = sorted(p.stem for p in photo_dir.iterdir() if p.is_file() and min(Image.open(p).size) >= 128)
    assert keys(out) == big[:3]


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
                         (["--source", str(tmp_path / "nope")], "is not a folder"),
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
