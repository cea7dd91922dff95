"""`pairforge inspect`: totals, per-shard table, histogram PNG and contact sheet PNG."""
from __future__ import annotations

from PIL import Image

from pairforge.pipeline import SynthConfig, synth
from pairforge.pipeline.inspect import format_report, inspect_dataset


def test_inspect_outputs(tmp_path, photo_dir, capsys):
    cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 5, "views": 2, "patch": {"size": 64, "per_image": 1}},
                                 "run": {"executor": "inline", "progress": False}})
    res = synth(str(photo_dir), str(tmp_path / "ds"), cfg)
    rep = inspect_dataset(res.url, str(tmp_path / "rep"), samples=4)
    assert rep["totals"]["samples"] == 12 and len(rep["shards"]) == 3
    assert rep["records_read"] == 24 and rep["parameters_plotted"] >= 3
    with Image.open(rep["histogram_png"]) as im:
        assert im.format == "PNG" and im.width > 300
    with Image.open(rep["contact_sheet_png"]) as im:
        # 4 rows of HR | LR0 | LR1 tiles (256 px + caption)
        assert im.format == "PNG" and im.width == 3 * 256 and im.height > 4 * 256
    text = format_report(rep)
    assert "shard-000002.tar" in text and "12 pairs" in text

    from pairforge.clusters.cli import main

    assert main(["inspect", res.url, "--out", str(tmp_path / "cli"), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert res.dataset_id in out and (tmp_path / "cli" / "contact_sheet.png").exists()
    assert main(["inspect", str(tmp_path / "nothing-here")]) == 2
