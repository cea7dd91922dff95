"""A rank's start-up cost that DeepSpeed would add for nothing.

``deepspeed.initialize`` and ZeRO's gradient partitioning import DeepSpeed's Muon optimizer only
to ask whether ours is one; those imports pull in ``torch._inductor`` kernels (~4.7 s per rank on
2 CPU cores). :func:`pairforge.training.loop.engines.skip_muon_probe` answers "no" instead. Checked in
a fresh interpreter (another test may have built an engine in this one).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, os, sys
import torch
from pairforge.training.runtime.launch import free_port
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
from pairforge.training.config import EngineConfig, OptimConfig
from pairforge.training.loop.engines import MUON_MODULES, build_engine, init_distributed
init_distributed()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
engine_cfg = EngineConfig(zero_stage=int(sys.argv[1]))
optim_cfg = OptimConfig(lr=1e-2, weight_decay=0.0)
engine = build_engine(net, engine_cfg, optim_cfg, micro_batch=4)
x = torch.randn(4, 8)
losses = []
for _ in range(3):
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
print(json.dumps({"muon_kernels": sorted(m for m in sys.modules if m.startswith("deepspeed.runtime.zero.muon.")
                                         and m not in MUON_MODULES),
                  "stand_in": all("pairforge" in (sys.modules[m].__doc__ or "") for m in MUON_MODULES),
                  "losses": losses}))
"""


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_zero_engine_trains_without_importing_muon(stage):
    res = subprocess.run([sys.executable, "-c", CHILD, str(stage)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["stand_in"], "DeepSpeed's Muon module was imported for real"
    assert not out["muon_kernels"], "a module of DeepSpeed's Muon package was imported while building the engine"
    assert out["losses"][-1] < out["losses"][0]  # the optimizer DeepSpeed wraps really steps
