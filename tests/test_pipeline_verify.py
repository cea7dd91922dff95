"""Damaged shards are never read as good: truncated (at a member boundary or inside one) and
byte-flipped shards of a real dataset raise ``ShardIntegrityError`` naming the shard in
``read_pairs``, in the trainer's stream and in ``pairforge inspect``; ``inspect --verify`` exits
non-zero; ``on_damage="skip"`` reads the other shards and counts the damaged one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from pairforge.pipeline import ShardIntegrityError, SynthConfig, load_manifest, read_pairs, synth
from pairforge.pipeline.pair_dataset import PairDataset, epoch_segments
from pairforge.training.loop.data import make_train_loader

pytestmark = pytest.mark.timeout(240)

DAMAGED = "shard-000001.tar"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A real dataset, made once: 3 shards of 4 pairs (bundled photos, 64 px patches, 1 view)."""
    cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 2, "views": 1, "patch": {"size": 64, "per_image": 2}},
                                 "run": {"executor": "inline", "progress": False, "device": "cpu"}})
    res = synth("bundled", str(tmp_path_factory.mktemp("ds")), cfg)
    assert res.ok and [s["count"] for s in res.manifest["shards"]] == [4, 4, 4]
    return res.url


@pytest.fixture
def dataset(template, tmp_path):
    """A private copy of the dataset, free to damage."""
    url = str(tmp_path / "ds")
    shutil.copytree(template, url)
    return url


# ------------------------------------------------------------------ damage, made with tar offsets
def _members(tar_path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tf:
        return tf.getmembers()


def cut_at_member_boundary(tar_path: str) -> None:
    """Drop the last sample whole: the file ends right before its first member's header."""
    last_key = _members(tar_path)[-1].name.split(".")[0]
    first_of_last = next(m for m in _members(tar_path) if m.name.startswith(last_key + "."))
    os.truncate(tar_path, first_of_last.offset)


def cut_inside_member(tar_path: str) -> None:
    """End the file halfway through the data of the second sample's HR png."""
    png = [m for m in _members(tar_path) if m.name.endswith(".png")][2]
    os.truncate(tar_path, png.offset_data + png.size // 2)


def flip_png_bytes(tar_path: str) -> None:
    """Invert 16 bytes in the middle of the first sample's HR png; the file keeps its size."""
    png = next(m for m in _members(tar_path) if m.name.endswith(".hr.png"))
    with open(tar_path, "r+b") as f:
        f.seek(png.offset_data + png.size // 2)
        data = f.read(16)
        f.seek(png.offset_data + png.size // 2)
        f.write(bytes(b ^ 0xFF for b in data))


DAMAGES = {"cut_at_member_boundary": cut_at_member_boundary, "cut_inside_member": cut_inside_member,
           "flip_png_bytes": flip_png_bytes}


def damage(dataset: str, how: str) -> dict:
    """Damage shard 1 of ``dataset``; returns its manifest entry."""
    DAMAGES[how](os.path.join(dataset, DAMAGED))
    return next(s for s in load_manifest(dataset)["shards"] if s["name"] == DAMAGED)


def _keys_of(url: str, shards: list[int]) -> list[str]:
    return [p["key"] for p in read_pairs(url, shards=shards)]


# ------------------------------------------------------------------ read_pairs
def test_cut_at_member_boundary_raises_naming_the_shard(dataset):
    entry = damage(dataset, "cut_at_member_boundary")
    assert os.path.getsize(os.path.join(dataset, DAMAGED)) < entry["bytes"]
    with pytest.raises(ShardIntegrityError, match=DAMAGED) as err:
        list(read_pairs(dataset))
    exc = err.value
    assert exc.problem == "size" and exc.shard.endswith(DAMAGED)
    assert exc.expected["bytes"] == entry["bytes"]
    assert exc.found["bytes"] == os.path.getsize(os.path.join(dataset, DAMAGED))


def test_skip_mode_reads_the_other_shards_and_counts_the_damaged_one(template, dataset):
    damage(dataset, "cut_at_member_boundary")
    pairs = read_pairs(dataset, on_damage="skip")
    with pytest.warns(UserWarning, match=f"skipped damaged shard .*{DAMAGED}"):
        keys = [p["key"] for p in pairs]
    assert keys == _keys_of(template, [0, 2])
    assert pairs.skipped.count == 1
    (skipped,) = pairs.skipped.shards
    assert skipped["shard"].endswith(DAMAGED) and skipped["problem"] == "size" and skipped["samples_read"] == 0
    with pytest.raises(ValueError, match="on_damage"):
        read_pairs(dataset, on_damage="ignore")


def test_cut_inside_member_is_a_clear_error_not_a_tar_error(dataset):
    damage(dataset, "cut_inside_member")
    with pytest.raises(ShardIntegrityError, match=DAMAGED) as err:
        list(read_pairs(dataset))
    assert err.value.problem == "size"
    # read as a bare tar URL there is no manifest to compare with; the broken tar still says so
    with pytest.raises(ShardIntegrityError, match=f"{DAMAGED}.*not a complete tar") as err:
        list(read_pairs(os.path.join(dataset, DAMAGED)))
    assert err.value.problem == "tar" and not isinstance(err.value, tarfile.TarError)


def test_flipped_bytes_fail_the_sha256_at_the_end_of_that_shard(template, dataset):
    entry = damage(dataset, "flip_png_bytes")
    assert os.path.getsize(os.path.join(dataset, DAMAGED)) == entry["bytes"]
    keys = []
    with pytest.raises(ShardIntegrityError, match=f"{DAMAGED}.*sha256") as err:
        for p in read_pairs(dataset):
            keys.append(p["key"])
    assert keys == _keys_of(template, [0])  # shard 0 read whole; nothing of the damaged shard
    exc = err.value
    assert exc.problem == "sha256" and exc.expected["sha256"] == entry["sha256"]
    assert exc.found["bytes"] == entry["bytes"] and exc.found["sha256"] != entry["sha256"]
    # skip mode reports it too, with how much of it had been read
    pairs = read_pairs(dataset, on_damage="skip")
    with pytest.warns(UserWarning, match=DAMAGED):
        assert [p["key"] for p in pairs] == _keys_of(template, [0, 2])
    assert [s["problem"] for s in pairs.skipped.shards] == ["sha256"]


# ------------------------------------------------------------------ pairforge inspect
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pairforge.clusters.cli", "inspect", *args], capture_output=True,
                          text=True, timeout=120)


def test_verify_passes_a_clean_dataset(template):
    run = _cli("--verify", template)
    assert run.returncode == 0, run.stderr
    total = load_manifest(template)["totals"]["bytes"]
    assert run.stdout.strip() == f"verified 3 shards, {total} bytes"


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_verify_fails_on_each_damage(dataset, how):
    damage(dataset, how)
    run = _cli("--verify", "--no-progress", dataset)
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and DAMAGED in lines[0] and "1 of 3 shards damaged" in lines[1]
    assert ("sha256" if how == "flip_png_bytes" else "the manifest records") in lines[0]


def test_plain_inspect_refuses_a_damaged_dataset(dataset, tmp_path, capsys):
    from pairforge.clusters.cli import main

    damage(dataset, "cut_at_member_boundary")
    assert main(["inspect", dataset, "--out", str(tmp_path / "rep")]) == 1
    assert DAMAGED in capsys.readouterr().err


# ------------------------------------------------------------------ the trainer's stream
def test_training_stream_raises_on_a_damaged_shard(dataset):
    damage(dataset, "cut_at_member_boundary")
    stream = iter(PairDataset(dataset, shuffle_window=2, endless=True))
    with pytest.raises(ShardIntegrityError, match=DAMAGED):
        for _ in range(2 * 12):  # an epoch reaches every shard
            next(stream)


def test_training_loader_worker_raises_the_integrity_error(dataset):
    damage(dataset, "flip_png_bytes")
    loader = make_train_loader(dataset, load_manifest(dataset)["shards"], 0, 1, batch_size=2, num_workers=1,
                               seed=0, crop=None, shuffle_window=2)
    with pytest.raises(ShardIntegrityError, match=f"{DAMAGED}.*sha256"):
        for _ in zip(range(12), loader):
            pass


def test_resume_skip_ahead_still_hashes_the_skipped_members(dataset):
    """The damaged sample lies before the resume point (read, never decoded): the sha256 catches it."""
    damage(dataset, "flip_png_bytes")
    window = 2
    seg = next(s for s in epoch_segments(load_manifest(dataset)["shards"], 0, 0) if s.entry["name"] == DAMAGED)
    ds = PairDataset(dataset, shuffle_window=window)
    ds.batch_size, ds.batches = 1, seg.start + window  # resumed past the damaged shard's first window
    with pytest.raises(ShardIntegrityError, match=f"{DAMAGED}.*sha256"):
        next(iter(ds))


def test_a_slot_that_ends_inside_a_shard_still_checks_the_rest_of_it(dataset):
    """A slot's share ends after the damaged shard's first sample; the damage (its last sample's HR
    png) lies after it. The slot still reads the shard to its end, and the sha256 fails."""
    path = os.path.join(dataset, DAMAGED)
    png = [m for m in _members(path) if m.name.endswith(".hr.png")][-1]
    with open(path, "r+b") as f:
        f.seek(png.offset_data + png.size // 2)
        f.write(b"\x00" * 16)
    seg = next(s for s in epoch_segments(load_manifest(dataset)["shards"], 0, 0) if s.entry["name"] == DAMAGED)
    ds = PairDataset(dataset, shuffle_window=1)
    reading = ds._read_segment(seg, 0, seg.start, seg.start + 1)
    assert next(reading)["key"]  # its one sample, intact
    with pytest.raises(ShardIntegrityError, match=f"{DAMAGED}.*sha256"):
        next(reading)


# ------------------------------------------------------------------ S3
def test_s3_dataset_verified_and_damage_reported(s3_server, template):
    from pairforge.pipeline.storage import get_fs

    url = f"{s3_server.make_bucket()}/ds"
    fs, path = get_fs(url)
    for name in sorted(os.listdir(template)):
        fs.put_file(os.path.join(template, name), f"{path}/{name}")
    assert _cli("--verify", url).returncode == 0
    with open(os.path.join(template, DAMAGED), "rb") as f:
        data = f.read()
    keep = next(m for m in _members(os.path.join(template, DAMAGED)) if m.name.endswith(".json")).offset
    s3_server.client().put_object(Bucket=path.split("/")[0], Key=f"ds/{DAMAGED}", Body=data[:keep])
    run = _cli("--verify", url)
    assert run.returncode == 1 and f"{url}/{DAMAGED}" in run.stdout
    assert "testing" not in run.stdout + run.stderr  # credentials never printed
    with pytest.raises(ShardIntegrityError, match=f"{url}/{DAMAGED}"):
        list(read_pairs(url))
