"""Dataset ids and LR pixels are pinned: refactoring the job or its config must not move them.

The values below were recorded with the keyword-argument ``synth()`` (before ``SynthConfig``)
for the same jobs.  A change here means every existing dataset folder stops being reused (id)
or that the same id now holds other pixels (LR digest) — both need a deliberate version bump,
never a silent drift.
"""
from __future__ import annotations

import hashlib

import pytest

from pairforge.pipeline import SynthConfig, read_pairs, synth
from pairforge.pipeline.job import plan_job

#: bundled photos, 64 px patches, one per image, 4 images per shard, seed 3, default preset
PINNED = SynthConfig.from_dict({"dataset": {"seed": 3, "images_per_shard": 4, "patch": {"size": 64, "per_image": 1}},
                                "run": {"executor": "inline", "progress": False}})
PINNED_ID = "realesrgan-x4plus-46a8f7b59423d746"
PINNED_LR_SHA256 = "a00a5e4147d0b741d0bd48ca6b8701dc1b4d45b365b30c07337b0b1d4bd1bcd9"

#: the patch size left to the preset (osediff: hr_size 512), upscaling, two views, webp HR
DEFAULT_SIZE = PINNED.replace(**{"dataset.degradation": "osediff", "dataset.patch.size": None, "dataset.views": 2,
                                 "dataset.patch.min_size_policy": "upscale", "dataset.encode.hr_format": "webp"})
DEFAULT_SIZE_ID = "osediff-1757e60380cd73bc"


def lr_digest(url: str) -> str:
    h = hashlib.sha256()
    for pair in read_pairs(url):
        h.update(pair["key"].encode())
        for lr in pair["lr"]:
            h.update(lr.tobytes())
    return h.hexdigest()


def test_pinned_dataset_id_and_lr_pixels(tmp_path):
    res = synth("bundled", str(tmp_path), PINNED)
    assert res.ok and res.dataset_id == PINNED_ID
    assert lr_digest(res.url) == PINNED_LR_SHA256


@pytest.mark.parametrize("config, expected", [(PINNED, PINNED_ID), (DEFAULT_SIZE, DEFAULT_SIZE_ID)])
def test_pinned_ids_and_the_resolved_patch_size(tmp_path, config, expected):
    plan = plan_job("bundled", str(tmp_path), config.dataset)
    assert plan.dataset_id == expected
    # the identity holds the resolved size, never "null": the preset's hr_size when none is given
    assert plan.job["identity"]["patch"]["size"] == (config.dataset.patch.size or plan.degradation.hr_size)


#: one change per field of DatasetConfig
CHANGES = [
    {"dataset.degradation": "resshift"}, {"dataset.seed": 4}, {"dataset.views": 2}, {"dataset.images_per_shard": 5},
    {"dataset.max_pixels": 10**7}, {"dataset.patch.size": 32}, {"dataset.patch.per_image": 2},
    {"dataset.patch.min_size_policy": "upscale"}, {"dataset.patch.min_side": 16}, {"dataset.patch.flips": False},
    {"dataset.encode.hr_format": "webp"}, {"dataset.encode.lr_format": "webp"}, {"dataset.encode.jpg_quality": 90},
]


def leaves(plain: dict, prefix: str) -> set[str]:
    return set().union(*(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
                         for k, v in plain.items()))


def test_changes_cover_every_dataset_field():
    assert {k for change in CHANGES for k in change} == leaves(PINNED.to_dict()["dataset"], "dataset.")


@pytest.mark.parametrize("override", CHANGES)
def test_every_dataset_field_is_identity(tmp_path, override):
    """``dataset`` is the identity: each of its fields, changed alone, names another dataset."""
    assert plan_job("bundled", str(tmp_path), PINNED.replace(**override).dataset).dataset_id != PINNED_ID
