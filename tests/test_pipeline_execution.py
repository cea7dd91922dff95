"""Ray placement: never wait for a GPU that is not there; fall back to CPU explicitly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pairforge.errors import UsageError
from pairforge.pipeline.execution import RayExecutor
from pairforge.pipeline.worker import resolve_device


def test_cpu_only_cluster_places_cpu_actors(ray_local):
    ex = RayExecutor(spec=None, workers=2, device="auto")
    workers, cpus, gpus, device, _ = ex._placement()
    assert (workers, cpus, gpus, device) == (2, 1.0, 0.0, "cpu")
    with pytest.raises(UsageError, match="no GPU"):  # exit 2: the user asked for what the cluster lacks
        RayExecutor(spec=None, workers=1, device="cuda")._placement()
    # more workers than logical CPUs: shrink the per-actor request instead of hanging
    workers, cpus, _, _, _ = RayExecutor(spec=None, workers=16, device="cpu")._placement()
    assert workers == 16 and cpus * 16 <= ray_local.cluster_resources()["CPU"]


def test_resolve_device_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    assert resolve_device("auto") == "cpu" and resolve_device("cuda") == "cpu" and resolve_device("cpu") == "cpu"


def test_fake_gpu_cluster_falls_back_to_cpu(tmp_path, photo_dir):
    """A cluster that *claims* a GPU (like a misconfigured node): the job must finish on CPU."""
    script = textwrap.dedent(f"""
        import json, sys
        from pairforge.pipeline.execution import init_ray, shutdown_ray
        from pairforge.pipeline import SynthConfig, synth
        init_ray(num_cpus=3, num_gpus=1, object_store_mb=256)
        try:
            cfg = SynthConfig.from_dict({{"dataset": {{"images_per_shard": 6, "patch": {{"size": 64, "per_image": 1}}}},
                                         "run": {{"workers": 1, "progress": False}}}})
            r = synth({str(photo_dir)!r}, {str(tmp_path)!r}, cfg)
        finally:
            shutdown_ray()
        print(json.dumps({{"ok": r.ok, "url": r.url}}))
    """)
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"]
    stats = json.load(open(os.path.join(res["url"], "shard-000000.stats.json")))
    assert stats["worker"]["device"] == "cpu"


def test_cli_joins_an_existing_cluster(ray_local, tmp_path):
    """`--ray-address` makes the CLI a second driver on a running cluster (here: the fixture's)."""
    addr = ray_local.get_runtime_context().gcs_address
    assert addr.startswith("127.0.0.1:")  # the embedded cluster binds to loopback
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "pairforge.clusters.cli", "synth", "--source", "bundled", "--out", str(tmp_path),
                          "--patch-size", "64", "--patches-per-image", "1", "--ray-address", addr, "--workers", "1",
                          "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    url = out.stdout.strip().splitlines()[-1]
    assert os.path.exists(os.path.join(url, "manifest.json"))
    assert ray_local.is_initialized()  # joining and leaving did not tear the cluster down
