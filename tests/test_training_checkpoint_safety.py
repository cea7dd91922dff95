"""Checkpoints are read without unpickling, through DeepSpeed's public surface only.

These tests pin the two places where pairforge reaches into DeepSpeed (checked against
0.19.8): the engine's ``checkpoint_engine`` attribute, replaced by a weights_only loader, and
``deepspeed.zero.GatheredParameters`` for exporting ZeRO-3 weights. A DeepSpeed update that
bypasses either makes these tests fail.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.slow]


class _Evil:
    """Unpickling this runs code: it creates the marker file named in the environment."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAIRFORGE_TEST_MARKER']}",))


def _engine(stage: int):
    from pairforge.training.config import load_config
    from pairforge.training.loop.engines import build_engine

    cfg = load_config(preset="tiny", overrides={"engine": {"zero_stage": stage}})
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    reference = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return build_engine(module, cfg.engine, cfg.optim_g, micro_batch=2), reference


def test_checkpoint_load_refuses_pickled_code(dist_env, tmp_path, monkeypatch):
    engine, _ = _engine(stage=2)
    assert type(engine.checkpoint_engine).__name__ == "SafeTorchCheckpointEngine"
    engine.save_checkpoint(str(tmp_path), tag="t")
    engine.load_checkpoint(str(tmp_path), tag="t")  # an honest checkpoint loads

    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAIRFORGE_TEST_MARKER", str(marker))
    states = tmp_path / "t" / "mp_rank_00_model_states.pt"
    sd = torch.load(states, weights_only=False)  # our own file, written just above
    sd["payload"] = _Evil()
    torch.save(sd, states)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|not allowed"):
        engine.load_checkpoint(str(tmp_path), tag="t")
    assert not marker.exists()


def test_zero3_export_gathers_full_weights(dist_env):
    from pairforge.training.loop.checkpoint import full_state_dict

    engine, reference = _engine(stage=3)
    # ZeRO-3 leaves each parameter's local data empty outside a gather
    assert any(p.data.numel() == 0 for p in engine.module.parameters())
    sd = full_state_dict(engine)
    assert sd.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(sd[k].float(), v), k


# ------------------------------------------------------------------------------ which checkpoint resumes
def _fake_checkpoint(root, step: int, *, sizes: bool = True, marker: bool = True) -> None:
    """The layout ``checkpoint.save`` writes, with small stand-in files (no engines needed)."""
    import json

    from pairforge.training.loop.checkpoint import TAG_FMT, checkpoint_files

    tag = TAG_FMT.format(step)
    for sub, name in (("G", "mp_rank_00_model_states.pt"), ("D", "mp_rank_00_model_states.pt"),
                      ("state", "rank0.safetensors")):
        (root / sub / tag).mkdir(parents=True, exist_ok=True)
        (root / sub / tag / name).write_bytes(b"x" * (100 + step))
    state = {"step": step, "tag": tag, "world": 1, "batches_consumed": step}
    if sizes:
        state["files"] = checkpoint_files(root, tag)
    if marker:
        (root / "state" / tag / "state.json").write_text(json.dumps(state))
        (root / "latest.json").write_text(json.dumps({"tag": tag, "step": step}))


def test_resume_takes_the_newest_intact_checkpoint_and_names_the_others(tmp_path):
    from pairforge.training.loop.checkpoint import (
        DAMAGED_DIR,
        choose_resumable,
        recorded_world_size,
        set_aside,
        skipped_warning,
    )

    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "state" / "step00000008" / "state.json").unlink()            # a killed save
    (tmp_path / "D" / "step00000006" / "mp_rank_00_model_states.pt").write_bytes(b"x")  # cut short
    choice = choose_resumable(tmp_path)
    assert choice.chosen.tag == "step00000004"
    assert [c.tag for c in choice.skipped] == ["step00000008", "step00000006"]
    warning = skipped_warning(choice)
    assert "step00000008: it has no completion marker" in warning
    assert "step00000006: D/step00000006/mp_rank_00_model_states.pt is 1 bytes, 106 when it was written" in warning
    assert "resuming from step00000004 instead" in warning
    assert recorded_world_size(tmp_path) == (1, 4)  # what the CLI checks before any rank starts
    set_aside(tmp_path, choice)
    assert sorted(p.name for p in (tmp_path / DAMAGED_DIR).iterdir()) == ["step00000006", "step00000008"]
    assert not (tmp_path / "G" / "step00000006").exists()
    assert '"step00000004"' in (tmp_path / "latest.json").read_text()
    assert choose_resumable(tmp_path).skipped == []


def test_a_missing_pointer_or_an_old_marker_still_resumes(tmp_path):
    from pairforge.training.loop.checkpoint import choose_resumable

    _fake_checkpoint(tmp_path, 3, sizes=False)  # written before sizes were recorded: trusted as before
    _fake_checkpoint(tmp_path, 5)
    (tmp_path / "latest.json").unlink()          # the pointer is a hint; the markers decide
    assert choose_resumable(tmp_path).chosen.step == 5


def test_no_intact_checkpoint_starts_from_step_zero_with_a_warning(tmp_path):
    from pairforge.training.loop.checkpoint import choose_resumable, skipped_warning

    _fake_checkpoint(tmp_path, 2, marker=False)
    choice = choose_resumable(tmp_path)
    assert choice.chosen is None and [c.step for c in choice.skipped] == [2]
    assert "training starts from step 0" in skipped_warning(choice)
    assert choose_resumable(tmp_path / "nothing-here").chosen is None
