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
