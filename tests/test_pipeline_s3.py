"""S3 round trips against moto's real HTTP server on 127.0.0.1 (see conftest.s3_server)."""
from __future__ import annotations

import hashlib
import logging
import os

import pytest

from pairforge.pipeline import JobError, SynthConfig, load_manifest, read_pairs, synth
from pairforge.pipeline.storage import get_fs

SMALL = SynthConfig.from_dict({"dataset": {"images_per_shard": 4, "patch": {"size": 64, "per_image": 2}},
                               "run": {"progress": False}})
INLINE = SMALL.replace(**{"run.executor": "inline"})


def s3_outputs(url: str) -> dict[str, str]:
    fs, path = get_fs(url)
    fs.invalidate_cache()
    return {k.rsplit("/", 1)[-1]: hashlib.sha256(fs.cat_file(k)).hexdigest() for k in sorted(fs.find(path))
            if k.endswith(".tar") or k.endswith("manifest.json")}


def test_s3_write_read_noop_and_resume(ray_local, s3_server, photo_dir, tmp_path):
    bucket = s3_server.make_bucket()
    res = synth(str(photo_dir), f"{bucket}/pairs", SMALL.replace(**{"run.workers": 2}))
    assert res.ok and res.url == f"{bucket}/pairs/{res.dataset_id}"
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket[5:])["Contents"]}
    prefix = f"pairs/{res.dataset_id}/"
    assert {prefix + n for n in ("job.json", "manifest.json", "shard-000000.tar", "shard-000000.stats.json")} <= keys
    man = load_manifest(res.url)
    pairs = list(read_pairs(res.url))
    assert len(pairs) == man["totals"]["samples"] == 24
    assert pairs[0]["hr"].shape == (64, 64, 3) and pairs[0]["lr"][0].shape == (16, 16, 3)
    # same bytes as a local run of the same job
    local = synth(str(photo_dir), str(tmp_path), INLINE)
    assert local.dataset_id == res.dataset_id
    expected = {n: hashlib.sha256(open(os.path.join(local.url, n), "rb").read()).hexdigest()
                for n in os.listdir(local.url) if n.endswith(".tar") or n == "manifest.json"}
    assert s3_outputs(res.url) == expected
    # no-op rerun
    assert synth(str(photo_dir), f"{bucket}/pairs", SMALL.replace(**{"run.workers": 2})).status == "reused"
    # lose a commit marker and the manifest (on S3 the stats object *is* the commit)
    fs, _ = get_fs(res.url)
    fs.rm_file(f"{res.url}/shard-000001.stats.json")
    fs.rm_file(f"{res.url}/manifest.json")
    with pytest.raises(JobError, match="--resume"):
        synth(str(photo_dir), f"{bucket}/pairs", SMALL.replace(**{"run.workers": 1}))
    again = synth(str(photo_dir), f"{bucket}/pairs", INLINE.replace(**{"run.resume": True}))
    assert again.status == "resumed" and again.shards_written == ["shard-000001.tar"]
    assert s3_outputs(res.url) == expected
    from pairforge.pipeline.inspect import inspect_dataset

    rep = inspect_dataset(res.url, str(tmp_path / "inspect"), samples=2, max_records=8)
    assert rep["totals"]["samples"] == 24 and all(r["wall_s"] is not None for r in rep["shards"])


def test_s3_source_and_secrets_never_logged(s3_server, photo_dir, tmp_path, monkeypatch, caplog, capsys):
    bucket = s3_server.make_bucket()
    fs, _ = get_fs(bucket)
    for root, _, names in os.walk(photo_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), photo_dir)
            fs.put_file(os.path.join(root, n), f"{bucket[5:]}/src/{rel}")
    fs.pipe_file(f"{bucket[5:]}/src/notes.md", b"not an image")
    secret = "Sup3rS3cretValue4Tests"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # moto accepts any credentials
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    caplog.set_level(logging.DEBUG, logger="pipeline")
    res = synth(f"{bucket}/src", str(tmp_path), INLINE)
    assert res.manifest["source"]["kind"] == "s3" and res.manifest["source"]["inputs"] == 12
    assert res.manifest["source"]["ignored_files"] == 1
    assert res.manifest["totals"]["samples"] == 24
    with pytest.raises(JobError) as err:  # an output bucket that does not exist: clear error
        synth(f"{bucket}/src", "s3://no-such-bucket-xyz/out", INLINE)
    assert "no-such-bucket-xyz" in str(err.value)
    text = caplog.text + capsys.readouterr().err + str(err.value)
    for n in os.listdir(res.url):
        text += open(os.path.join(res.url, n), "rb").read().decode("latin-1")
    assert secret not in text
    s3fs.S3FileSystem.clear_instance_cache()
