"""``make gpu-check`` on a machine without CUDA: every check is named as skipped with the reason,
one results file is written, and it exits 0 — its plumbing is proven before a GPU is lent.
(On a CUDA machine the same command runs the checks; that is not a suite test.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_gpu_check_without_cuda_skips_every_check_and_exits_0(tmp_path):
    out = tmp_path / "gpu.md"
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out), "--work", str(tmp_path / "w")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"ok": True, "out": str(out), "device": "no CUDA device"}
    text = out.read_text()
    for name in ("cuda-tests", "degradation", "train-step", "upscale"):
        assert f"## {name}\n\nskipped: no CUDA device" in text, text
    assert "torch " + torch.__version__ in text
    assert not (tmp_path / "w" / "sd21-random").exists()  # nothing heavy was prepared


def test_make_gpu_check_target_exists():
    res = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "bench/gpu_check.py" in res.stdout, res.stderr
