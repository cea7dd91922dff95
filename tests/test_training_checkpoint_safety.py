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
    from pairforge.training.engines import build_engine

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
    from pairforge.training.checkpoint import full_state_dict

    engine, reference = _engine(stage=3)
    # ZeRO-3 leaves each parameter's local data empty outside a gather
    assert any(p.data.numel() == 0 for p in engine.module.parameters())
    sd = full_state_dict(engine)
    assert sd.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(sd[k].float(), v), k
