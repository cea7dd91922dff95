"""End to end: real shards written by the pipeline, real DeepSpeed engines on gloo ranks.

Trainer-mechanics tests: the perceptual loss/metrics use ``perceptual_backbone: random``
(asked for by name, so these tests do not need prepared ImageNet weights); the report must
then say so. The kill → resume test kills a rank through the trainer's test hook, an
environment variable (``PAIRFORGE_TEST_KILL_AT_STEP``), never a config field.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from pairforge.training import TrainConfig, from_dict, train
from pairforge.training.loop.trainer import TEST_KILL_AT_STEP_ENV, kill_step_from_env

MECHANICS = {"loss.perceptual_backbone": "random", "loss.adv_start_step": 0, "data.batch_size": 2,
             "data.num_workers": 1, "log.log_every": 1, "log.progress_bar": False, "log.tensorboard": True}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_zero2_tiny_from_s3(s3_server, tmp_path):
    from pairforge.pipeline import SynthConfig, synth

    bucket = s3_server.make_bucket()
    cfg = SynthConfig.from_dict({"dataset": {"degradation": "realesrgan-x4plus", "seed": 11, "views": 2,
                                             "images_per_shard": 2, "patch": {"size": 64, "per_image": 2}},
                                 "run": {"executor": "inline", "progress": False, "device": "cpu"}})
    res = synth("bundled", f"{bucket}/pairs", cfg)
    assert res.ok and res.url.startswith("s3://") and len(res.manifest["shards"]) == 3
    out = tmp_path / "run"
    r = train("tiny", data=res.url, out=out, steps=4, ranks=2, zero_stage=2,
              overrides={**MECHANICS, "log.val_every": 2, "log.ckpt_every": 2, "data.val_samples": 4})
    assert r["rc"] == 0
    m = _metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3, 4]
    assert all(math.isfinite(x["loss_g"]) and math.isfinite(x["loss_d"]) for x in m)
    assert m[-1]["samples"] == 4 * 2 * 2  # steps × batch × ranks
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["held_out_shards"] == 1
    val = [json.loads(ln) for ln in (out / "validation.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, 2, 4] and all(v["n"] == 4 for v in val)
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest == {"tag": "step00000004", "step": 4}
    for sub in ("G", "D"):
        files = {p.name for p in (out / "checkpoints" / sub / "step00000004").iterdir()}
        assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    assert (out / "export" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "export" / "lora" / "pytorch_lora_weights.safetensors").exists()
    report = (out / "report.md").read_text()
    assert "random" in report and "WARNING" in report
    assert (out / "loss_curves.png").exists() and (out / "image_grid.png").exists()
    assert list((out / "tensorboard").iterdir())


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    from pairforge.pipeline import SynthConfig, synth

    cfg = SynthConfig.from_dict({"dataset": {"degradation": "realesrgan-x4plus", "seed": 5, "views": 2,
                                             "images_per_shard": 3, "patch": {"size": 64, "per_image": 2}},
                                 "run": {"executor": "inline", "progress": False, "device": "cpu"}})
    res = synth("bundled", str(tmp_path_factory.mktemp("pairs")), cfg)
    assert res.ok
    return res.url


def _module_state(out: Path, sub: str, tag: str) -> dict[str, torch.Tensor]:
    from pairforge.training.loop.checkpoint import safe_torch_load

    return safe_torch_load(out / "checkpoints" / sub / tag / "mp_rank_00_model_states.pt")["module"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_checkpoint_kill_resume_equals_uninterrupted(local_dataset, tmp_path):
    ov = {**MECHANICS, "log.val_every": 0, "log.ckpt_every": 3, "data.val_shards": 0}
    a, b = tmp_path / "a", tmp_path / "b"
    assert train("tiny", data=local_dataset, out=a, steps=6, overrides=ov)["rc"] == 0

    killed = train("tiny", data=local_dataset, out=b, steps=6, overrides=ov, extra_env={TEST_KILL_AT_STEP_ENV: "4"})
    assert killed["rc"] != 0  # SIGKILLed after step 4; the step-3 checkpoint is the latest
    assert json.loads((b / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert not (b / "export").exists()
    assert train("tiny", data=local_dataset, out=b, steps=6, overrides=ov, resume="auto")["rc"] == 0

    for sub in ("G", "D"):
        sa, sb = _module_state(a, sub, "step00000006"), _module_state(b, sub, "step00000006")
        assert sa.keys() == sb.keys()
        diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
        assert diff == 0.0, f"{sub}: resumed run differs from the uninterrupted one by {diff}"
    ma, mb = _metrics(a), _metrics(b)
    assert [x["step"] for x in mb] == [1, 2, 3, 4, 5, 6]  # the curve continues, no duplicates
    for xa, xb in zip(ma, mb):
        assert xa["loss_g"] == pytest.approx(xb["loss_g"], abs=1e-6)  # same samples, same order


def test_the_kill_hook_is_no_config_field(caplog):
    """A test hook has no place in the user's config: it is no field, and a YAML that still names
    the retired key loads without it, with a warning that points to the environment variable."""
    assert "debug_kill_at_step" not in TrainConfig().to_dict()
    with caplog.at_level(logging.WARNING, logger="pairforge.training.config"):
        cfg = from_dict({"base": "tiny", "debug_kill_at_step": 4})
    assert "debug_kill_at_step" not in cfg.to_dict() and TEST_KILL_AT_STEP_ENV in caplog.text


def test_the_kill_hook_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(TEST_KILL_AT_STEP_ENV, raising=False)
    assert kill_step_from_env() is None
    monkeypatch.setenv(TEST_KILL_AT_STEP_ENV, "0")
    assert kill_step_from_env() is None
    monkeypatch.setenv(TEST_KILL_AT_STEP_ENV, "4")
    assert kill_step_from_env() == 4
    monkeypatch.setenv(TEST_KILL_AT_STEP_ENV, "four")
    with pytest.raises(ValueError, match=TEST_KILL_AT_STEP_ENV):
        kill_step_from_env()
