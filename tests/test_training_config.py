"""Training config: presets load, bad values name the field, missing weights say what to get."""
from __future__ import annotations

import pytest

from pairforge.training.config import ConfigError, available_presets, from_dict, load_config

pytestmark = pytest.mark.timeout(60)


def test_presets_load():
    assert {"tiny", "d3sr-sd21", "d3sr-sdxl"} <= set(available_presets())
    tiny = load_config(preset="tiny")
    assert tiny.generator.arch == "tiny" and tiny.generator.timestep == 399
    sd = load_config(preset="d3sr-sd21")
    assert (sd.generator.lora_rank, sd.generator.lora_alpha) == (16, 16.0)
    assert sd.optim_g.lr == pytest.approx(5e-5)
    xl = load_config(preset="d3sr-sdxl")
    assert xl.discriminator.arch == "sdxl"


@pytest.mark.parametrize("override, field", [
    ({"generator": {"lora_rank": 0}}, "generator.lora_rank"),
    ({"generator": {"timestep": 1000}}, "generator.timestep"),
    ({"engine": {"zero_stage": 4}}, "engine.zero_stage"),
    ({"engine": {"precision": "fp8"}}, "engine.precision"),
    ({"optim_d": {"lr": -1}}, "optim_d.lr"),
    ({"optim_g": {"betas": [0.9]}}, "optim_g.betas"),
    ({"data": {"batch_size": "four"}}, "data.batch_size"),
    ({"data": {"num_workers": True}}, "data.num_workers"),
    ({"loss": {"gan": "wgan"}}, "loss.gan"),
    ({"loss": {"adv": -0.1}}, "loss.adv"),
    ({"discriminator": {"t_min": 500, "t_max": 100}}, "discriminator.t_max"),
    ({"discriminator": {"arch": "sdxl", "pretrained_path": None}}, "discriminator.pretrained_path"),
    ({"log": {"log_every": 0}}, "log.log_every"),
    ({"engine": {"zero_stagee": 2}}, "engine.zero_stagee"),
    ({"stepz": 3}, "stepz"),
    ({"generator": {"lora_targets": "to_q"}}, "generator.lora_targets"),
])
def test_errors_name_the_field(override, field):
    with pytest.raises(ConfigError) as exc:
        from_dict({"base": "tiny", **override})
    assert str(exc.value).startswith(field + ":"), str(exc.value)


def test_yaml_file_and_numbers_as_strings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("base: tiny\nsteps: 7\noptim_g: {lr: 1e-4}\n")
    cfg = load_config(p)
    assert cfg.steps == 7 and cfg.optim_g.lr == pytest.approx(1e-4)
    assert cfg.data.crop_size == 64  # inherited from the preset
    with pytest.raises(ConfigError, match="^base: 'nope' is neither a bundled training preset"):
        from_dict({"base": "nope"})
    with pytest.raises(ConfigError, match="^preset: the inheritance key is `base:`"):
        from_dict({"preset": "tiny"})


def test_missing_pretrained_folder_says_what_to_download(tmp_path):
    from pairforge.training.model.networks import build_generator
    from pairforge.training.model.pretrained_folders import PretrainedMissing

    cfg = load_config(preset="d3sr-sd21", overrides={"generator": {"pretrained_path": str(tmp_path / "sd21")}})
    with pytest.raises(PretrainedMissing) as exc:
        build_generator(cfg.generator)
    msg = str(exc.value)
    assert "stabilityai/stable-diffusion-2-1-base" in msg and str(tmp_path / "sd21") in msg
    assert msg.startswith("generator.pretrained_path")


def test_cli_reports_invalid_config(capsys):
    from pairforge.clusters.cli import main

    rc = main(["train", "--preset", "tiny", "--data", "x", "--out", "y", "--set", "data.batch_size=0"])
    assert rc == 2
    assert "data.batch_size" in capsys.readouterr().err


def test_a_saved_config_with_a_retired_key_still_loads(tmp_path, caplog):
    """An old run's config.yaml names the retired test hook: it loads (for --resume) with a
    warning; an unknown key that is not retired is still an error."""
    import logging

    import yaml

    saved = load_config(preset="tiny")
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump({**saved.to_dict(), "debug_kill_at_step": 4}, sort_keys=False))
    with caplog.at_level(logging.WARNING, logger="pairforge.training.config"):
        cfg = load_config(p)
    assert cfg == saved
    assert "debug_kill_at_step" in caplog.text and "PAIRFORGE_TEST_KILL_AT_STEP" in caplog.text
    with pytest.raises(ConfigError, match="^debug_kill_at_stepp:"):
        from_dict({"base": "tiny", "debug_kill_at_stepp": 4})
