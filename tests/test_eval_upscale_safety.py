"""`pairforge eval` scores what it says it scores, fails early on missing shards and keeps what it
scored when a shard breaks mid-way; `pairforge upscale` never writes over a file it was not told to.

Everything goes through the real command line (``pairforge.clusters.cli.main``) on a real tiny
dataset (3 shards × 2 pairs, synthesized inline from the test photos), a real tiny exported
generator and the real perceptual weights. The run's data split is written by the trainer's own
``split_data`` and ``write_run_files`` (a real training run costs minutes of DeepSpeed start-up;
tests/test_demo.py trains for real and its eval stage asks for ``--pairs held-out``, which exits 2
unless the run recorded its split).
"""
from __future__ import annotations

import csv
import json
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pairforge.clusters.cli import main

pytestmark = pytest.mark.timeout(300)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dataset(photo_dir, tmp_path_factory) -> dict:
    """3 shards of 2 pairs (64 px HR): the trainer holds out the last shard."""
    from pairforge.pipeline import SynthConfig, synth

    root = tmp_path_factory.mktemp("evalsafety")
    photos = root / "photos"
    photos.mkdir()
    for p in sorted(Path(photo_dir).glob("photo_0[012].*")):
        shutil.copy(p, photos / p.name)
    cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 1, "patch": {"size": 64, "per_image": 2}},
                                 "run": {"executor": "inline", "progress": False}})
    res = synth(str(photos), str(root / "ds"), cfg)
    shards = res.manifest["shards"]
    assert [s["count"] for s in shards] == [2, 2, 2], shards
    keys = {}
    for s in shards:  # sample keys per shard, straight from the tars
        with tarfile.open(Path(res.url) / s["name"]) as tar:
            keys[s["name"]] = sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return {"url": res.url, "root": root, "shards": [s["name"] for s in shards], "keys": keys}


def _run(dataset: dict, name: str, **overrides) -> Path:
    """RUN/export (a tiny generator) and RUN/run.json as the trainer writes it for this dataset."""
    from pairforge.training.config import load_config
    from pairforge.training.loop.trainer import Session, split_data, write_run_files
    from pairforge.training.model.networks import build_generator

    cfg = load_config(preset="tiny", overrides=overrides)
    run = dataset["root"] / "runs" / name
    g = build_generator(cfg.generator, seed=3).eval()
    g.export(run / "export", base="tiny(seed=3)", lora_on_base=True)
    split = split_data(cfg, dataset["url"], None)
    session = Session(cfg, run, 0, 1, torch.device("cpu"), split, SimpleNamespace(backbones={}), None, None, None)
    write_run_files(session)
    return run


@pytest.fixture(scope="module")
def run_dir(dataset) -> Path:
    return _run(dataset, "tiny")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A tiny generator export on its own (no dataset needed), for upscale."""
    from pairforge.training.config import load_config
    from pairforge.training.model.networks import build_generator

    out = tmp_path_factory.mktemp("upscale-export") / "export"
    build_generator(load_config(preset="tiny").generator, seed=3).eval().export(out, base="tiny(seed=3)",
                                                                             lora_on_base=True)
    return out


def _eval(args: list[str], out: Path, weights: Path) -> int:
    return main(["eval", *args, "--out", str(out), "--weights", str(weights), "--device", "cpu", "--crop-border", "0"])


# --------------------------------------------------------------------------- which pairs eval scores
def test_run_export_on_its_own_dataset_scores_only_held_out_pairs(dataset, run_dir, tmp_path,
                                                                   weights_dir, capsys) -> None:
    split = json.loads((run_dir / "run.json").read_text())["split"]
    assert [e["name"] for e in split["held_out"]] == dataset["shards"][-1:]
    assert split["dataset_id"] and [e["name"] for e in split["train"]] == dataset["shards"][:-1]

    out = tmp_path / "out"
    assert _eval(["--model", str(run_dir / "export"), "--data", dataset["url"]], out, weights_dir) == 0
    cap = capsys.readouterr()
    held = dataset["keys"][dataset["shards"][-1]]
    rows = _csv(out / "per_image.csv")
    assert sorted({r["image"] for r in rows}) == held
    assert {r["shard"] for r in rows} == {dataset["shards"][-1]} and {r["training_pair"] for r in rows} == {"False"}
    pairs = json.loads((out / "metrics.json").read_text())["settings"]["pairs"]
    assert pairs["selection"] == "held-out" and pairs["known"] is True
    assert pairs["scored"] == 2 and pairs["training_pairs"] == 0
    assert "held-out pairs" in cap.err and dataset["shards"][-1] in cap.err and "run.json" in cap.err
    assert "none of them training pairs" in (out / "table.md").read_text()


def test_pairs_all_counts_the_training_pairs(dataset, run_dir, tmp_path, weights_dir, capsys) -> None:
    out = tmp_path / "all"
    assert _eval(["--model", str(run_dir / "export"), "--data", dataset["url"], "--pairs", "all"],
                 out, weights_dir) == 0
    cap = capsys.readouterr()
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["settings"]["pairs"]["scored"] == 6 and doc["settings"]["pairs"]["training_pairs"] == 4
    assert "6 scored, 4 of them TRAINING pairs" in (out / "table.md").read_text()
    assert "4 of them TRAINING pairs" in cap.out
    assert (cap.out + cap.err).count("Pairs: 6 scored") == 1, "the table's footer is said once, not again as a note"
    trained = {r["image"] for r in _csv(out / "per_image.csv") if r["training_pair"] == "True"}
    assert trained == set(dataset["keys"][dataset["shards"][0]] + dataset["keys"][dataset["shards"][1]])

    # a run that held nothing out (validation off): every pair by default, each one a training pair
    no_val = _run(dataset, "no-val", log={"val_every": 0})
    out = tmp_path / "no-val-out"
    assert _eval(["--model", str(no_val / "export"), "--data", dataset["url"], "--limit", "2"], out, weights_dir) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["pairs"]["training_pairs"] == 2
    assert "every one a TRAINING pair" in capsys.readouterr().err

    # an export without its run's record: every pair, and the table says it cannot tell
    loose = tmp_path / "loose"
    shutil.copytree(run_dir / "export", loose)
    out = tmp_path / "loose-out"
    assert _eval(["--model", str(loose), "--data", dataset["url"], "--limit", "2"], out, weights_dir) == 0
    pairs = json.loads((out / "metrics.json").read_text())["settings"]["pairs"]
    assert pairs["selection"] == "all" and pairs["known"] is False and pairs["training_pairs"] is None
    assert "cannot tell how many are training pairs" in (out / "table.md").read_text()
    capsys.readouterr()
    # … and asking for held-out pairs it cannot tell apart is a usage error, before any work
    assert _eval(["--model", str(loose), "--data", dataset["url"], "--pairs", "held-out"],
                 tmp_path / "no", weights_dir) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert "--pairs held-out: cannot tell" in line and not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- shards that are not there
def _copy(dataset: dict, tmp_path: Path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(dataset["url"], copy)
    return copy


def test_a_deleted_shard_stops_eval_before_anything_is_scored(dataset, tmp_path, weights_dir, capsys) -> None:
    ds = _copy(dataset, tmp_path)
    gone = dataset["shards"][1]
    (ds / gone).unlink()
    out = tmp_path / "out"
    assert _eval(["--model", "bicubic", "--data", str(ds), "--save-images"], out, weights_dir) == 2
    assert not out.exists()  # the first shard's pairs were not scored (no images, no metrics)
    (line,) = _lines(capsys.readouterr().err)
    assert gone in line and "missing" in line and "Traceback" not in line


def test_damage_found_mid_scoring_exits_1_and_keeps_the_scored_pairs(dataset, tmp_path, weights_dir,
                                                                      capsys) -> None:
    ds = _copy(dataset, tmp_path)
    bad = dataset["shards"][2]
    data = (ds / bad).read_bytes()
    cut = len(data.rstrip(b"\0")) * 2 // 3  # truncated in its second sample, then zero-filled back to its size:
    assert any(data[cut:])                   # the size still matches the manifest, the bytes do not
    (ds / bad).write_bytes(data[:cut] + bytes(len(data) - cut))
    out = tmp_path / "out"
    assert _eval(["--model", "bicubic", "--data", str(ds)], out, weights_dir) == 1
    cap = capsys.readouterr()
    last = _lines(cap.err)[-1]
    assert bad in last and "partial" in last and "Traceback" not in cap.err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["partial"]["shard"] == bad and doc["partial"]["pairs_scored"] == 4
    scored = {r["image"] for r in _csv(out / "per_image.csv")}
    assert scored == set(dataset["keys"][dataset["shards"][0]] + dataset["keys"][dataset["shards"][1]])
    assert doc["rows"][0]["method"] == "bicubic" and doc["settings"]["images"] == 4
    assert (out / "table.md").read_text().startswith("PARTIAL")


@no_cuda
def test_eval_device_cuda_without_cuda_is_one_line_exit_2(dataset, tmp_path, weights_dir, capsys) -> None:
    for device in ("cuda", "nonsense"):
        out = tmp_path / device
        assert main(["eval", "--model", "bicubic", "--data", dataset["url"], "--out", str(out),
                     "--weights", str(weights_dir), "--device", device]) == 2
        (line,) = _lines(capsys.readouterr().err)
        assert line.startswith("pairforge eval: error: --device " + device) and not out.exists()


# --------------------------------------------------------------------------- upscale never overwrites silently
def _png(path: Path, h: int = 6, w: int = 7, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _upscale(src: Path, dst: Path, model: Path, *extra: str) -> int:
    return main(["upscale", str(src), str(dst), "--model", str(model), "--device", "cpu", "--no-progress",
                 "--scale", "2", *extra])


def test_upscale_refuses_an_existing_output_unless_overwrite(export_dir, tmp_path, capsys) -> None:
    photo = _png(tmp_path / "photo.png")
    precious = _png(tmp_path / "precious.png", 5, 5, seed=1)
    before = precious.read_bytes()
    capsys.readouterr()
    assert _upscale(photo, precious, export_dir) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert str(precious) in line and "--overwrite" in line
    assert precious.read_bytes() == before
    # refused before the model is touched: an export that would not even load gives the same answer
    broken = tmp_path / "broken-export"
    broken.mkdir()
    (broken / "pairforge_generator.json").write_text("{}")
    assert _upscale(photo, precious, broken) == 2
    assert "exist already" in capsys.readouterr().err and precious.read_bytes() == before
    # a folder of outputs: the existing ones are named, nothing is written
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        _png(tmp_path / "in" / name)
    _png(tmp_path / "out" / "b.png", 3, 3)
    assert _upscale(tmp_path / "in", tmp_path / "out", export_dir) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "out" / "b.png") in err and not (tmp_path / "out" / "a.png").exists()

    assert _upscale(photo, precious, export_dir, "--overwrite") == 0
    assert Image.open(precious).size == (14, 12)


def test_upscale_never_writes_over_an_input(export_dir, tmp_path, capsys) -> None:
    photo = _png(tmp_path / "photo.png")
    before = photo.read_bytes()
    capsys.readouterr()
    for flags in ([], ["--overwrite"]):
        assert _upscale(photo, photo, export_dir, *flags) == 2
        (line,) = _lines(capsys.readouterr().err)
        assert "overwrite an input" in line and photo.read_bytes() == before
    # the input's own folder as the output folder: refused, nothing lands among the inputs
    folder = tmp_path / "pics"
    _png(folder / "a.png")
    _png(folder / "b.jpg", seed=2)
    listing = sorted(p.name for p in folder.iterdir())
    for flags in ([], ["--overwrite"]):
        assert _upscale(folder, folder, export_dir, *flags) == 2
        assert "is the input folder" in capsys.readouterr().err
        assert sorted(p.name for p in folder.iterdir()) == listing
    # one file into the folder that holds it: its output would be the input itself
    assert _upscale(folder / "a.png", folder, export_dir, "--overwrite") == 2
    assert "overwrite an input" in capsys.readouterr().err


@no_cuda
def test_upscale_device_errors_are_one_line_exit_2(export_dir, tmp_path, capsys) -> None:
    photo = _png(tmp_path / "photo.png")
    for device in ("cuda", "nonsense"):
        capsys.readouterr()
        assert main(["upscale", str(photo), str(tmp_path / f"{device}.png"), "--model", str(export_dir),
                     "--device", device]) == 2
        (line,) = _lines(capsys.readouterr().err)
        assert "--device " + device in line and not (tmp_path / f"{device}.png").exists()
