"""Ray's private API that pairforge relies on, and where its public switch is set.

pipeline.execution._loopback_only sets ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` for the
duration of ``ray.init`` (checked against Ray 2.60.0), so an embedded cluster keeps 127.0.0.1
as its address in a process that imported ray before anyone could set Ray's public switch
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before ``import ray``, which the CLI sets).  These
tests fail when a Ray upgrade renames the constant, stops reading it where the address is
resolved, or when the CLI starts importing ray before it sets the switch.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pairforge.pipeline.execution import RAY_CLUSTER_ENV, on_loopback

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (no Ray switch inherited); its last stdout line as JSON."""
    base = {k: v for k, v in os.environ.items() if k not in (RAY_CLUSTER_ENV, "RAY_USAGE_STATS_ENABLED")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=150, env={**base, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_private_constant_is_still_where_ray_resolves_loopback():
    """The private names _loopback_only relies on exist and are still read at call time."""
    import ray
    from ray._private import ray_constants, services, worker

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == RAY_CLUSTER_ENV
    # services reads the module attribute when called, so setting it takes effect
    assert services.ray_constants is ray_constants
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)
    assert "get_node_ip_address()" in inspect.getsource(services.resolve_ip_for_localhost)
    # where ray.init resolves a loopback node address and a loopback bootstrap address
    assert "resolve_ip_for_localhost(_node_ip_address)" in inspect.getsource(worker.init)
    assert "resolve_ip_for_localhost(host)" in inspect.getsource(services.canonicalize_bootstrap_address)
    assert ray.init is worker.init


def test_loopback_only_keeps_127_0_0_1_and_restores_the_constant():
    res = _python("""
        import json
        import ray
        from ray._private import ray_constants, services
        from pairforge.pipeline.execution import _loopback_only
        before = ray_constants.ENABLE_RAY_CLUSTER
        with _loopback_only(None):
            inside = services.resolve_ip_for_localhost("127.0.0.1")
        with _loopback_only("10.1.2.3:6379"):
            untouched = ray_constants.ENABLE_RAY_CLUSTER
        print(json.dumps({"before": before, "inside": inside, "after": ray_constants.ENABLE_RAY_CLUSTER,
                          "untouched": untouched}))
    """)
    assert res == {"before": True, "inside": "127.0.0.1", "after": True, "untouched": True}


def test_init_ray_binds_loopback_in_a_process_that_imported_ray_first():
    """A library user: ray already imported, no switch set; init_ray leaves nothing behind."""
    res = _python(f"""
        import json, os
        import ray
        from ray._private import ray_constants
        from pairforge.pipeline.execution import init_ray, shutdown_ray
        init_ray(num_cpus=1, object_store_mb=128)
        try:
            gcs = ray.get_runtime_context().gcs_address
            node = ray.util.get_node_ip_address()
        finally:
            shutdown_ray()
        print(json.dumps({{"gcs": gcs, "node": node, "flag": ray_constants.ENABLE_RAY_CLUSTER,
                          "env": os.environ.get({RAY_CLUSTER_ENV!r})}}))
    """)
    assert res["gcs"].startswith("127.0.0.1:") and res["node"] == "127.0.0.1"
    assert res["flag"] is True and res["env"] is None


@pytest.mark.parametrize("address, switch", [(None, "0"), ("127.0.0.1:6379", "0"), ("10.1.2.3:6379", None)])
def test_the_cli_sets_rays_public_switch_before_importing_ray(address, switch):
    args = ["synth", "--source", "bundled", "--out", "x"] + (["--ray-address", address] if address else [])
    res = _python(f"""
        import json, os, sys
        from pairforge.clusters.cli import build_parser, setup_process
        parser, chosen = build_parser({args!r})
        setup_process(chosen, parser.parse_args({args!r}))
        imported_early = "ray" in sys.modules
        from ray._private import ray_constants
        print(json.dumps({{"imported_early": imported_early, "switch": os.environ.get({RAY_CLUSTER_ENV!r}),
                          "flag": ray_constants.ENABLE_RAY_CLUSTER,
                          "stats": os.environ.get("RAY_USAGE_STATS_ENABLED")}}))
    """)
    assert res == {"imported_early": False, "switch": switch, "flag": switch is None, "stats": "0"}


@pytest.mark.parametrize("address, expected", [
    (None, True), ("", True), ("auto", True), ("127.0.0.1:6379", True), ("localhost:6379", True),
    ("[::1]:6379", True), ("10.1.2.3:6379", False), ("head.example.org:6379", False),
    ("ray://127.0.0.1:10001", False),
])
def test_on_loopback(address, expected):
    assert on_loopback(address) is expected
