"""`pairforge export`: a dataset as hr/ and lr/ PNG folders with BasicSR's meta_info file.

Checked against BasicSR's own pairing rule for a meta_info_file (basicsr/data/data_util.py,
``paired_paths_from_meta_info_file``: the first space-separated field of each line is the GT
file name; the LQ file has the same name in the LQ folder), against the dataset's own pixels
(read through the verified reader), and for the promise that a folder named OUT is complete:
a damaged shard leaves only OUT.partial, which the same command finishes once the shard is whole.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pairforge.clusters.cli import main
from pairforge.pipeline import read_pairs


def _basicsr_pairs(out: Path) -> list[tuple[Path, Path]]:
    """(gt, lq) paths as BasicSR's PairedImageDataset finds them with meta_info_file and filename_tmpl '{}'."""
    with open(out / "meta_info.txt") as fin:
        gt_names = [line.strip().split(" ")[0] for line in fin]
    return [(out / "hr" / name, out / "lr" / name) for name in gt_names]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "export.json"}


def test_export_writes_basicsr_folders_with_the_datasets_pixels(training_pairs, tmp_path, capsys):
    out = tmp_path / "folders"
    assert main(["export", training_pairs, str(out), "--no-progress"]) == 0
    assert f"to {out}" in capsys.readouterr().out
    manifest = json.loads((Path(training_pairs) / "manifest.json").read_text())
    pairs = _basicsr_pairs(out)
    assert len(pairs) == manifest["totals"]["samples"]
    by_key = {s["key"]: s for s in read_pairs(training_pairs, strict=True)}
    for gt, lq in pairs:
        sample = by_key[gt.stem]
        assert np.array_equal(np.asarray(Image.open(gt)), sample["hr"])
        assert np.array_equal(np.asarray(Image.open(lq)), sample["lr"][0])
        h, w = sample["hr"].shape[:2]
        assert lq.name == gt.name and np.asarray(Image.open(lq)).shape[:2] == (h // 4, w // 4)
    assert sorted(p.name for p in (out / "hr").iterdir()) == sorted(p.name for p in (out / "lr").iterdir())
    line = (out / "meta_info.txt").read_text().splitlines()[0]
    assert line.endswith(f" ({by_key[Path(line.split()[0]).stem]['hr'].shape[0]},"
                         f"{by_key[Path(line.split()[0]).stem]['hr'].shape[1]},3)")
    record = json.loads((out / "export.json").read_text())
    assert record["complete"] and record["pairs"] == len(pairs) and record["dataset_id"] == manifest["dataset_id"]
    assert not (tmp_path / "folders.partial").exists()

    assert main(["export", training_pairs, str(out), "--no-progress"]) == 2  # never into an existing folder
    assert "exists already" in capsys.readouterr().err


def test_limit_and_shards_pick_the_pairs(training_pairs, tmp_path):
    manifest = json.loads((Path(training_pairs) / "manifest.json").read_text())
    second = manifest["shards"][1]["name"]
    out = tmp_path / "some"
    assert main(["export", training_pairs, str(out), "--no-progress", "--shards", "1", "--limit", "3"]) == 0
    keys = {s["key"] for s in read_pairs(training_pairs, shards=[second])}
    names = [gt.stem for gt, _ in _basicsr_pairs(out)]
    assert len(names) == 3 and set(names) <= keys
    assert json.loads((out / "export.json").read_text())["shards"] == [second]
    for wrong in ("99", "no-such-shard.tar"):  # one line, exit 2, nothing written
        assert main(["export", training_pairs, str(tmp_path / wrong), "--no-progress", "--shards", wrong]) == 2
        assert not (tmp_path / wrong).exists() and not (tmp_path / f"{wrong}.partial").exists()


def test_a_damaged_shard_leaves_no_folder_named_out_and_the_export_resumes(training_pairs, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(training_pairs, data)
    manifest = json.loads((data / "manifest.json").read_text())
    last = data / manifest["shards"][-1]["name"]
    whole = last.read_bytes()
    damaged = bytearray(whole)
    damaged[len(damaged) // 2] ^= 0xFF                      # same size, other bytes: only the sha256 finds it
    last.write_bytes(bytes(damaged))

    out = tmp_path / "folders"
    assert main(["export", str(data), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert last.name in err and "damaged shard" in err, err
    assert not out.exists(), "a folder named OUT must be complete"
    partial = tmp_path / "folders.partial"
    kept = _digests(partial)
    assert kept and "meta_info.txt" not in kept               # the shards before the damaged one, no meta_info

    last.write_bytes(whole)                                 # the shard is whole again: the same command finishes
    assert main(["export", str(data), str(out), "--no-progress"]) == 0
    assert not partial.exists() and json.loads((out / "export.json").read_text())["complete"]
    clean = tmp_path / "clean"
    assert main(["export", str(data), str(clean), "--no-progress"]) == 0
    assert _digests(out) == _digests(clean)
    assert all(_digests(out)[k] == v for k, v in kept.items())
