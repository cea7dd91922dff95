"""The safe reader never unpickles: pickle-ish members are dropped (or refused with strict=True)."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest

from pairforge.pipeline import UnsafeMemberError, load_manifest, read_pairs
from pairforge.pipeline.shards import encode_image


class _Boom:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


@pytest.fixture
def hostile_tar(tmp_path):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps(_Boom(str(marker)))
    hr = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    lr = hr[::4, ::4].copy()
    obj_npy = io.BytesIO()
    np.save(obj_npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tf:
        _add(tf, "s0.hr.png", encode_image(hr, "png"))
        _add(tf, "s0.json", b'{"views": []}')
        _add(tf, "s0.lr.png", encode_image(lr, "png"))
        _add(tf, "s0.pyd", evil)
        _add(tf, "s0.pickle", evil)
        _add(tf, "s0.pth", evil)
        _add(tf, "s0.mask.npy", obj_npy.getvalue())
        _add(tf, "s1.hr.png", encode_image(hr, "png"))
        _add(tf, "s1.lr.png", encode_image(lr, "png"))
        _add(tf, "s1.depth.npy", (lambda b: (np.save(b, np.arange(4)), b.getvalue())[1])(io.BytesIO()))
    return path, marker, hr, lr


def test_pickle_members_are_ignored_never_unpickled(hostile_tar):
    path, marker, hr, lr = hostile_tar
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        samples = list(read_pairs(str(path)))
    assert not marker.exists()
    assert [s["key"] for s in samples] == ["s0", "s1"]
    np.testing.assert_array_equal(samples[0]["hr"], hr)
    np.testing.assert_array_equal(samples[0]["lr"][0], lr)
    assert samples[0]["params"] == {"views": []} and samples[1]["params"] == {}
    assert "extra" not in samples[0]  # the object-dtype npy was refused
    np.testing.assert_array_equal(samples[1]["extra"]["depth.npy"], np.arange(4))
    msgs = " ".join(str(x.message) for x in w)
    assert "s0.pyd" in msgs and "s0.pickle" in msgs and "requires pickle" in msgs


def test_strict_mode_refuses(hostile_tar):
    path, marker, _, _ = hostile_tar
    with pytest.raises(UnsafeMemberError):
        list(read_pairs(str(path), strict=True))
    assert not marker.exists()


def test_incomplete_dataset_is_not_readable(tmp_path):
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not finished"):
        load_manifest(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        list(read_pairs(f"file://{tmp_path}"))
    assert os.path.exists(tmp_path / "job.json")
