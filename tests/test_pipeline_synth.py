"""End-to-end synth on real inputs: bundled photos and a local folder, on real local Ray."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile

import numpy as np
import pytest

from pairforge.pipeline import JobError, SourceError, SynthConfig, load_manifest, read_pairs, synth

SMALL = SynthConfig.from_dict({"dataset": {"images_per_shard": 3, "patch": {"size": 64, "per_image": 2}},
                               "run": {"progress": False}})
INLINE = SMALL.replace(**{"run.executor": "inline"})
QUIET = SynthConfig.from_dict({"run": {"progress": False}})


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def files(folder) -> dict[str, str]:
    return {n: sha(os.path.join(folder, n)) for n in sorted(os.listdir(folder))}


def shard_bytes(url: str) -> dict[str, str]:
    return {n: h for n, h in files(url).items() if n.endswith(".tar") or n == "manifest.json"}


def test_bundled_end_to_end_on_ray(ray_local, tmp_path):
    res = synth("bundled", str(tmp_path), SMALL.replace(**{"run.workers": 2}))
    assert res.ok and res.status == "created"
    assert res.url.startswith(str(tmp_path)) and os.path.basename(res.url) == res.dataset_id
    man = load_manifest(res.url)
    assert man["totals"]["inputs"] == 6 and man["totals"]["skipped_inputs"] == 0
    assert man["totals"]["samples"] == 12 and len(man["shards"]) == 2
    assert man["scale"] == 4 and man["hr_size"] == 64 and man["views"] == 1
    for s in man["shards"]:  # manifest describes the bytes on disk
        path = os.path.join(res.url, s["name"])
        assert os.path.getsize(path) == s["bytes"] and sha(path) == s["sha256"]
        stats = json.load(open(os.path.join(res.url, s["name"].replace(".tar", ".stats.json"))))
        assert stats["status"] == "committed" and stats["count"] == s["count"]
        assert {"read", "decode", "patch", "degrade", "encode", "write", "wall"} <= set(stats["timings"])
    pairs = list(read_pairs(res.url))
    assert len(pairs) == 12
    keys = [p["key"] for p in pairs]
    assert len(set(keys)) == 12 and all("." not in k for k in keys)
    for p in pairs:
        assert p["hr"].shape == (64, 64, 3) and p["hr"].dtype == np.uint8
        assert len(p["lr"]) == 1 and p["lr"][0].shape == (16, 16, 3)
        assert p["params"]["key"] == p["key"] and p["params"]["seed"] == 0
        assert p["params"]["views"][0]["key"] == p["key"] + "_v0"
        assert len(p["params"]["patch"]["crop_box"]) == 4
    with tarfile.open(os.path.join(res.url, "shard-000000.tar")) as tf:
        names = tf.getnames()
    assert names[:3] == ["00000000_000.hr.png", "00000000_000.json", "00000000_000.lr.png"]


def test_same_bytes_for_any_worker_count_and_executor(ray_local, tmp_path, photo_dir):
    runs = {
        "inline": synth(str(photo_dir), str(tmp_path / "a"), INLINE),
        "ray1": synth(str(photo_dir), str(tmp_path / "b"), SMALL.replace(**{"run.workers": 1})),
        "ray2": synth(str(photo_dir), str(tmp_path / "c"), SMALL.replace(**{"run.workers": 2, "run.batch_size": 5})),
    }
    ids = {r.dataset_id for r in runs.values()}
    assert len(ids) == 1, "the dataset id must not depend on how the job runs"
    ref = shard_bytes(runs["inline"].url)
    assert len(ref) == 5  # 4 shards + manifest (12 images / 3 per shard)
    for name, r in runs.items():
        assert shard_bytes(r.url) == ref, name


def test_rerun_is_a_noop_and_other_config_never_overwrites(tmp_path, photo_dir):
    first = synth(str(photo_dir), str(tmp_path), INLINE)
    before = {n: (h, os.stat(os.path.join(first.url, n)).st_mtime_ns) for n, h in files(first.url).items()}
    again = synth(str(photo_dir), str(tmp_path), INLINE)
    assert again.status == "reused" and again.url == first.url and again.shards_written == []
    other = synth(str(photo_dir), str(tmp_path), INLINE.replace(**{"dataset.seed": 1}))
    assert other.ok and other.url != first.url
    after = {n: (h, os.stat(os.path.join(first.url, n)).st_mtime_ns) for n, h in files(first.url).items()}
    assert after == before
    assert shard_bytes(other.url) != shard_bytes(first.url)


def test_views_formats_and_view0_stability(tmp_path, photo_dir):
    one = synth(str(photo_dir), str(tmp_path), INLINE)
    three = synth(str(photo_dir), str(tmp_path),
                  INLINE.replace(**{"dataset.views": 3, "dataset.encode.hr_format": "webp"}))
    with tarfile.open(os.path.join(three.url, "shard-000000.tar")) as tf:
        names = tf.getnames()
    assert "00000000_000.hr.webp" in names and "00000000_000.lr.2.png" in names
    single = {p["key"]: p for p in read_pairs(one.url)}
    for p in read_pairs(three.url):
        assert len(p["lr"]) == 3 and [v["key"] for v in p["params"]["views"]] == [p["key"] + f"_v{k}" for k in range(3)]
        np.testing.assert_array_equal(p["hr"], single[p["key"]]["hr"])  # webp lossless
        # view 0 of a K-view dataset is the single-view dataset's LR (same key, same seed)
        np.testing.assert_array_equal(p["lr"][0], single[p["key"]]["lr"][0])
        assert not np.array_equal(p["lr"][0], p["lr"][1])


def test_list_file_and_webdataset_sources(tmp_path, photo_dir):
    names = sorted(p for p in os.listdir(photo_dir) if p.endswith((".png", ".jpg")))
    lst = tmp_path / "inputs.txt"
    lst.write_text("# my inputs\n" + "\n".join(names[:3]) + f"\n{photo_dir / 'sub'}/{os.listdir(photo_dir / 'sub')[0]}\n")
    res = synth(str(lst), str(tmp_path / "o1"), INLINE)
    assert res.manifest["totals"]["inputs"] == 4 and res.manifest["source"]["kind"] == "list"
    # a pairforge dataset is itself a source: its HR patches become the new inputs
    tiny = INLINE.replace(**{"dataset.images_per_shard": 64, "dataset.patch.size": 32, "dataset.patch.per_image": 1})
    res2 = synth(res.url, str(tmp_path / "o2"), tiny)
    assert res2.manifest["source"]["kind"] == "webdataset"
    assert res2.manifest["totals"]["samples"] == res.manifest["totals"]["samples"]
    res3 = synth(os.path.join(res.url, "shard-000000.tar"), str(tmp_path / "o3"), tiny)
    assert res3.manifest["totals"]["inputs"] == res.manifest["shards"][0]["count"]


def test_reader_reads_shard_subsets(tmp_path, photo_dir):
    res = synth(str(photo_dir), str(tmp_path), INLINE)
    man = res.manifest
    sub = list(read_pairs(res.url, shards=[1, "shard-000003.tar"]))
    assert len(sub) == man["shards"][1]["count"] + man["shards"][3]["count"]
    assert {p["key"][:8] for p in sub} == {f"{i:08d}" for i in (3, 4, 5, 9, 10, 11)}
    direct = list(read_pairs(f"file://{res.url}/shard-000001.tar"))
    assert [p["key"] for p in direct] == [p["key"] for p in sub[: len(direct)]]


def test_clear_errors(tmp_path, capsys):
    from pairforge.clusters.cli import main

    with pytest.raises(SourceError, match="does not exist"):
        synth(str(tmp_path / "nope"), str(tmp_path / "out"), QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        synth(str(tmp_path / "empty"), str(tmp_path / "out"), QUIET)
    with pytest.raises(JobError, match="not divisible"):
        synth("bundled", str(tmp_path / "out"), QUIET.replace(**{"dataset.patch.size": 66}))
    assert main(["synth", "--source", "gs://bucket/x", "--out", str(tmp_path / "o")]) == 2
    assert "unsupported source URL scheme" in capsys.readouterr().err


def test_config_errors_name_the_field(tmp_path, capsys):
    from pairforge.clusters.cli import main
    from pairforge.config import ConfigError

    for dotted, value, field in [("dataset.views", 0, "dataset.views"),
                                 ("dataset.images_per_shard", 0, "dataset.images_per_shard"),
                                 ("dataset.patch.per_image", 0, "dataset.patch.per_image"),
                                 ("run.executor", "threads", "run.executor")]:
        with pytest.raises(ConfigError, match=f"^{field}: "):
            QUIET.replace(**{dotted: value})
    with pytest.raises(ConfigError, match=r"^dataset\.degradation\.scale: "):
        SynthConfig.from_dict({"dataset": {"degradation": {"scale": 3}}})
    with pytest.raises(ConfigError, match=r"^run\.wokers: unknown field"):
        SynthConfig.from_dict({"run": {"wokers": 2}})
    with pytest.raises(JobError, match=r"^dataset\.degradation: unknown degradation preset"):
        synth("bundled", str(tmp_path / "out"), QUIET.replace(**{"dataset.degradation": "no-such-preset"}))
    assert main(["synth", "--source", "bundled", "--out", str(tmp_path / "o"), "--views", "0"]) == 2
    assert "dataset.views (--views): expected an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_round_trips_through_plain_data():
    from pairforge.degradations import load_preset

    cfg = INLINE.replace(**{"dataset.views": 2, "run.workers": 3})
    assert SynthConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.dataset.views == 2 and cfg.run.workers == 3 and cfg.dataset.patch.size == 64
    assert SynthConfig.from_dict({"run": {"executor": "inline"}}, {"dataset.seed": 7}).dataset.seed == 7
    inline_deg = SynthConfig.from_dict({"dataset": {"degradation": load_preset("osediff").to_dict()}})
    assert inline_deg.dataset.degradation.fingerprint() == load_preset("osediff").fingerprint()


def test_cli_options_build_the_config():
    import argparse

    from pairforge.clusters.commands.synth import add_parser, build_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())

    def parse(*extra: str) -> SynthConfig:
        return build_config(parser.parse_args(["synth", "--source", "s", "--out", "o", *extra]))

    assert parse() == SynthConfig()  # the CLI's defaults are the config's defaults
    cfg = parse("--config", "my.yaml", "--seed", "5", "--patches-per-image", "3", "--views", "2", "--workers", "4",
                "--ray-address", "ray://head:10001", "--resume", "--images-per-shard", "8", "--patch-size", "96",
                "--min-size-policy", "upscale", "--hr-format", "webp", "--lr-format", "webp", "--batch-size", "7",
                "--device", "cpu", "--cpus-per-worker", "1.5", "--executor", "inline", "--no-progress")
    assert cfg.to_dict() == {
        "dataset": {"degradation": "my.yaml", "seed": 5, "views": 2, "images_per_shard": 8,
                    "max_pixels": SynthConfig().dataset.max_pixels,
                    "patch": {"size": 96, "per_image": 3, "min_size_policy": "upscale", "min_side": 32, "flips": True},
                    "encode": {"hr_format": "webp", "lr_format": "webp", "jpg_quality": 95}},
        "run": {"executor": "inline", "workers": 4, "ray_address": "ray://head:10001", "device": "cpu",
                "batch_size": 7, "cpus_per_worker": 1.5, "max_retries": 2, "resume": True, "progress": False}}
    assert parse("--preset", "osediff").dataset.degradation == "osediff"
