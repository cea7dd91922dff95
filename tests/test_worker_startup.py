"""Process-wide settings belong to entry points: a Ray worker's start-up applies the allocator
policy (degradations.memory.retain_freed_memory); the inline executor, which runs in the
caller's process, leaves it to the caller (the CLI opts in)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]


def make_spec(out: str):
    """The smallest real JobSpec: bundled preset, 64 px patches, png."""
    from pairforge.degradations import load_preset
    from pairforge.pipeline.patching import PatchConfig
    from pairforge.pipeline.shards import EncodeConfig
    from pairforge.pipeline.worker import JobSpec

    return JobSpec(dataset_url=out, degradation=load_preset("realesrgan-x4plus"), patch=PatchConfig(size=64, per_image=1),
                   encode=EncodeConfig(), seed=0, views=1, code_version={})


def test_a_ray_worker_applies_the_allocator_policy_at_start_up(ray_local, tmp_path):
    from pairforge.pipeline.execution import _ShardActor

    class Probe(_ShardActor):
        def policy_calls(self) -> int:
            from pairforge.degradations.memory import retain_freed_memory

            return retain_freed_memory.cache_info().currsize

    actor = ray_local.remote(Probe).options(num_cpus=1, max_restarts=0).remote(make_spec(str(tmp_path)), "cpu", None)
    try:
        assert ray_local.get(actor.policy_calls.remote(), timeout=180) == 1
    finally:
        ray_local.kill(actor)


def test_the_inline_executor_leaves_the_allocator_alone(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_worker_startup import make_spec
        from pairforge.degradations.memory import retain_freed_memory
        from pairforge.pipeline.execution import InlineExecutor
        report = InlineExecutor(make_spec({str(tmp_path)!r}), device="cpu").run([])
        assert report.workers, report
        print("policy calls:", retain_freed_memory.cache_info().currsize)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=200,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "policy calls: 0"
