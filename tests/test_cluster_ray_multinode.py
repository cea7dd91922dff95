"""A real two-node Ray cluster on one machine, driven through the real ``pairforge synth`` CLI.

Why: "it runs on a cluster" is only true once shards really spread over separate raylets and
survive what clusters do — a node vanishing, the driver dying, the object store going away or
throttling.  Here ``ray.cluster_utils.Cluster`` starts a head and one worker node (separate
raylets, all on 127.0.0.1) once for the module; every job is a ``pairforge synth
--ray-address`` subprocess, the way a user joins a cluster.  Each fault is injected for real
(SIGKILL of a node's processes or of the driver, a moto S3 server stopped and started again,
503 SlowDown from a proxy) and the result is compared byte for byte with the embedded default
(the CLI without ``--ray-address``) for the same arguments.

Measured on this project's 2-core machines: with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` every
node and the GCS bind 127.0.0.1 (without it Ray dials the machine's other address and times
out); the two nodes start in ~15 s.  Each node declares 2 logical CPUs (4 on 2 real cores:
actors must not starve other work) and a 100 MiB object store.  ``RAY_TMPDIR`` points at a
private short folder, so the cluster's sockets and its ``ray_current_cluster`` address file
stay out of the shared ``/tmp/ray``.

S3 traffic from the driver *and* from the workers on both nodes goes to a fault proxy
(tests/faultproxy.py) in front of a private moto server on a fixed port, which can therefore be
stopped and started again; the workers get the endpoint from the environment their raylet
was started with, as on a real cluster.  Objects are checked through the session's healthy
moto server (moto keeps one bucket state per process).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from faultproxy import FaultProxy

from pairforge.pipeline.storage import ENV_VARS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: 16 images, one per shard, 16 patches of 128 px each: 256 pairs, a few tenths of a second
#: per shard, so a fault injected after the first commit finds most shards still to do
N_IMAGES, PER_IMAGE = 16, 16
JOB_ARGS = ["--patch-size", "128", "--patches-per-image", str(PER_IMAGE), "--images-per-shard", "1",
            "--workers", "2", "--no-progress"]
NODE_CPUS, OBJECT_STORE = 2, 100 << 20
#: short per-object retries (well under a second of backoff for a refused connection), so the
#: outages below last longer than one object's retries: only the job-level policy can ride them out
QUICK_S3 = {"connect_timeout": "1", "read_timeout": "5", "attempts": "3", "deadline_s": "30",
            "backoff_base_s": "0.05", "backoff_max_s": "0.2"}
OUTAGE_S = 3.0
CLI_TIMEOUT = 240


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RestartableMoto:
    """A moto S3 server on a fixed loopback port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@dataclass
class TwoNodes:
    """The module's cluster: its address, and the head's and the worker node's Ray node ids."""

    cluster: object
    worker: object
    proxy: FaultProxy
    moto: RestartableMoto
    ray_tmp: str

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    @property
    def worker_id(self) -> str:
        return self.worker.node_id

    def ensure_worker(self) -> None:
        """Add a worker node again if a test removed it (the next test wants two nodes)."""
        if self.worker not in self.cluster.worker_nodes:
            self.worker = add_worker(self.cluster)


def add_worker(cluster):
    node = cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return node


def cli(out: str, source: str, *extra: str, address: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "pairforge.clusters.cli", "synth", "--source", source, "--out", out, *JOB_ARGS, *extra]
    return cmd + (["--ray-address", address] if address else [])


def quick_s3_env() -> dict:
    return {**os.environ, **{ENV_VARS[k]: v for k, v in QUICK_S3.items()}}


def run_cli(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)


def start_cli(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"pairforge synth did not finish within {CLI_TIMEOUT}s: {err[-3000:]}")
    return proc.returncode, out, err


def wait_until(cond, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Poll ``cond`` until true; fail if the job ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def local_outputs(ds: str) -> dict[str, str]:
    """sha256 of every tar and the manifest of a local dataset folder."""
    return {n: hashlib.sha256(open(os.path.join(ds, n), "rb").read()).hexdigest() for n in sorted(os.listdir(ds))
            if n.endswith(".tar") or n == "manifest.json"}


def local_stats(ds: str) -> dict[str, dict]:
    return {n: json.load(open(os.path.join(ds, n))) for n in sorted(os.listdir(ds)) if n.endswith(".stats.json")}


def s3_objects(s3_server, ds: str) -> dict[str, bytes]:
    bucket, prefix = ds[len("s3://"):].split("/", 1)
    client = s3_server.client()
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listing}


def s3_outputs(found: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(b).hexdigest() for n, b in sorted(found.items())
            if n.endswith(".tar") or n == "manifest.json"}


def tar_keys(paths_or_bytes) -> list[str]:
    """Every sample key in the given tars, in order (a key is the member name before its first dot)."""
    import io

    keys: list[str] = []
    for item in paths_or_bytes:
        fileobj = io.BytesIO(item) if isinstance(item, bytes) else open(item, "rb")
        with fileobj, tarfile.open(fileobj=fileobj) as tar:
            names = [m.name for m in tar.getmembers()]
        keys += sorted({n.split(".", 1)[0] for n in names})
    return keys


class BucketWatch:
    """Polls a dataset prefix from another thread for as long as the job runs and records every
    moment the store showed something partial: a commit marker without its tar at the recorded
    size, or a manifest before every shard was committed."""

    def __init__(self, s3_server, out: str, n_shards: int) -> None:
        self.bucket, self.prefix = out[len("s3://"):].split("/", 1)
        self.client = s3_server.client()
        self.n_shards = n_shards
        self.violations: list[str] = []
        self.polls = 0
        self._recorded: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "BucketWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def commits(self) -> int:
        return len(self._recorded)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._check()
            self.polls += 1
            time.sleep(0.02)

    def _check(self) -> None:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + "/").get("Contents", [])
        sizes = {o["Key"]: o["Size"] for o in listing}
        for key in sizes:
            if key.endswith(".stats.json") and key not in self._recorded:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                self._recorded[key] = json.loads(body)["bytes"]
        for key, recorded in self._recorded.items():
            tar = key[: -len(".stats.json")] + ".tar"
            if sizes.get(tar) != recorded:
                self.violations.append(f"{key} visible with its tar at {sizes.get(tar)} bytes, not {recorded}")
        if any(k.endswith("/manifest.json") for k in sizes):
            markers = [k for k in sizes if k.endswith(".stats.json")]
            if len(markers) < self.n_shards:
                self.violations.append(f"manifest.json visible with {len(markers)}/{self.n_shards} shards committed")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """16 real photo crops (160 px, png) from scikit-image's bundled images."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("cluster-photos")
    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(1)
    for i in range(N_IMAGES):
        img = images[i % len(images)]
        y, x = int(rng.integers(0, img.shape[0] - 160)), int(rng.integers(0, img.shape[1] - 160))
        Image.fromarray(np.ascontiguousarray(img[y:y + 160, x:x + 160])).save(root / f"img_{i:02d}.png")
    return str(root)


@pytest.fixture(scope="module")
def two_nodes(s3_server):
    """Head + one worker node on 127.0.0.1, with S3 pointed at a fault proxy before any raylet starts."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log: one line per poll below
    moto = RestartableMoto()
    moto.start()
    proxy = FaultProxy(moto.url).start()
    ray_tmp = tempfile.mkdtemp(prefix="pfc-", dir="/tmp")
    cluster = None
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp,
                     "AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL_S3": proxy.url}.items():
            mp.setenv(k, v)
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        # ray may have been imported by another test module before the variable was set
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        try:
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": NODE_CPUS, "object_store_memory": OBJECT_STORE, "node_ip_address": "127.0.0.1",
                "include_dashboard": False})
            nodes = TwoNodes(cluster, add_worker(cluster), proxy, moto, ray_tmp)
            assert nodes.address.startswith("127.0.0.1:")
            yield nodes
        finally:
            if cluster is not None:
                cluster.shutdown()
            proxy.stop()
            moto.stop()
            shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def cluster(two_nodes) -> TwoNodes:
    two_nodes.ensure_worker()
    two_nodes.proxy.clear()
    return two_nodes


#: one Python process: synth() on an embedded Ray of its own (the default), then synth() joining
#: the cluster — what a notebook does.  Ray's first init leaves token authentication switched on
#: in the process; the second job's actors were cancelled until shutdown_ray undid that.
EMBEDDED_THEN_CLUSTER = """
import json, sys
from pairforge.pipeline import SynthConfig, synth
source, out_embedded, out_cluster, address = sys.argv[1:5]
cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 1, "patch": {"size": 128, "per_image": %d}},
                             "run": {"workers": 2, "progress": False}})
urls = []
for out, addr in ((out_embedded, None), (out_cluster, address)):
    res = synth(source, out, cfg.replace(**{"run.ray_address": addr}))
    assert res.ok, res.failed
    urls.append(res.url)
print(json.dumps(urls))
""" % PER_IMAGE


@pytest.fixture(scope="module")
def embedded_then_cluster(photos, tmp_path_factory, two_nodes) -> dict:
    """The embedded default and a run on the cluster, same arguments, from one Python process."""
    outs = [str(tmp_path_factory.mktemp(n)) for n in ("embedded", "joined")]
    res = subprocess.run([sys.executable, "-c", EMBEDDED_THEN_CLUSTER, photos, *outs, two_nodes.address], cwd=REPO,
                         capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    embedded, joined = json.loads(res.stdout.strip().splitlines()[-1])
    return {"embedded": embedded, "joined": joined}


@pytest.fixture(scope="module")
def reference(embedded_then_cluster) -> dict:
    """The embedded default's dataset id and the sha256 of its tars and manifest."""
    ds = embedded_then_cluster["embedded"]
    expected = local_outputs(ds)
    assert len(expected) == N_IMAGES + 1
    assert json.load(open(os.path.join(ds, "manifest.json")))["totals"]["samples"] == N_IMAGES * PER_IMAGE
    return {"id": os.path.basename(ds), "outputs": expected}


# ----------------------------------------------------------------------------- tests
def test_inline_stats_record_no_node(tmp_path, photo_dir):
    """Outside Ray there is no node: ``worker.node`` is null, and nothing else changes."""
    from pairforge.pipeline import SynthConfig, synth

    cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 6, "patch": {"size": 64, "per_image": 1}},
                                 "run": {"executor": "inline", "progress": False}})
    res = synth(str(photo_dir), str(tmp_path), cfg)
    assert res.ok
    for stats in local_stats(res.url).values():
        assert "node" in stats["worker"] and stats["worker"]["node"] is None


def test_shards_spread_over_both_nodes_byte_identical_to_embedded(cluster, reference, embedded_then_cluster):
    """synth() joining the cluster, in the process that ran the embedded default just before."""
    ds = embedded_then_cluster["joined"]
    assert os.path.basename(ds) == reference["id"]
    writers = {s["worker"]["node"] for s in local_stats(ds).values()}
    assert writers == {cluster.head_id, cluster.worker_id}
    assert local_outputs(ds) == reference["outputs"]


def test_driver_killed_mid_job_resumes_byte_identical(cluster, reference, photos, tmp_path):
    cmd = cli(str(tmp_path), photos, address=cluster.address)
    proc = start_cli(cmd)

    def committed() -> list:
        return list(tmp_path.glob("*/*.stats.json"))

    wait_until(lambda: len(committed()) >= 2, proc, "two shards were committed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    (ds,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (ds / "manifest.json").exists()
    assert 2 <= len(committed()) < N_IMAGES, "the kill came too late to interrupt anything"

    resumed = run_cli(cmd + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == str(ds)
    assert "resumed" in resumed.stdout
    assert not [n for n in os.listdir(ds) if ".tmp-" in n]
    assert local_outputs(str(ds)) == reference["outputs"]


def probe_met(proxy: FaultProxy, since: int, fault: str, out: str) -> bool:
    """Whether the outage probe of the job writing to ``out`` (a PUT re-writing its ``job.json``,
    sent only after a shard's upload gave up) met ``fault`` (a :class:`faultproxy.Logged` action)
    after log entry ``since`` on every one of its attempts, so the job is now waiting for the
    store (and will say when it answers again).

    The fault tests below hold their fault until then: on a fast machine the first seconds of an
    outage may meet nothing but the dataset lock's lease while every shard is still computing;
    and a probe whose first attempt met the fault can still succeed on its own retry if the fault
    ends in between, and then the job never waits (seen once under load): hence one more
    failed probe request than a probe makes attempts.
    """
    prefix = "/" + out[len("s3://"):] + "/"
    met = [e for e in proxy.log[since:] if e.action == fault and e.method == "PUT" and e.path.startswith(prefix)
           and re.search(r"/job\.json(\?|$)", e.path)]
    return len(met) > int(QUICK_S3["attempts"])


def test_s3_server_stopped_and_restarted_mid_job(cluster, reference, photos, s3_server):
    out = f"{s3_server.make_bucket()}/pairs"
    seen = len(cluster.proxy.log)
    with BucketWatch(s3_server, out, N_IMAGES) as watch:
        proc = start_cli(cli(out, photos, address=cluster.address), env=quick_s3_env())
        wait_until(lambda: watch.commits() >= 1, proc, "the first shard was committed")
        cluster.moto.stop()                      # the store is gone: every request now fails
        try:
            time.sleep(OUTAGE_S)                 # far longer than one object's retries
            wait_until(lambda: probe_met(cluster.proxy, seen, "upstream-down", out), proc,
                       "a failed shard upload made the job probe the stopped store")
        finally:
            cluster.moto.start()                 # same port, same buckets (moto's state is per process)
        rc, stdout, stderr = finish(proc)
    assert rc == 0, stderr[-3000:]
    assert watch.polls > 10 and not watch.violations, watch.violations[:5]
    down = [e for e in cluster.proxy.log[seen:] if e.action == "upstream-down"]
    assert down, "no request met the stopped server: the fault was not injected"
    assert "answers again" in stderr, stderr[-3000:]
    ds = stdout.strip().splitlines()[-1]
    found = s3_objects(s3_server, ds)
    assert s3_outputs(found) == reference["outputs"]
    nodes = {json.loads(b)["worker"]["node"] for n, b in found.items() if n.endswith(".stats.json")}
    assert nodes == {cluster.head_id, cluster.worker_id}


def test_s3_slowdown_for_a_while_then_recovers(cluster, reference, photos, s3_server):
    out = f"{s3_server.make_bucket()}/pairs"
    with BucketWatch(s3_server, out, N_IMAGES) as watch:
        proc = start_cli(cli(out, photos, address=cluster.address), env=quick_s3_env())
        wait_until(lambda: watch.commits() >= 1, proc, "the first shard was committed")
        seen = len(cluster.proxy.log)
        cluster.proxy.slow_down(".*", method="PUT")  # every write throttled, from every node
        try:
            time.sleep(OUTAGE_S)
            wait_until(lambda: probe_met(cluster.proxy, seen, "slowdown", out), proc,
                       "a throttled shard upload made the job probe the store")
        finally:
            cluster.proxy.clear()
        rc, stdout, stderr = finish(proc)
    assert rc == 0, stderr[-3000:]
    assert watch.polls > 10 and not watch.violations, watch.violations[:5]
    throttled = cluster.proxy.requests("PUT")
    assert len([e for e in throttled if e.action == "slowdown"]) >= 4, "no write was throttled"
    assert "answers again" in stderr, stderr[-3000:]
    found = s3_objects(s3_server, stdout.strip().splitlines()[-1])
    assert s3_outputs(found) == reference["outputs"]


def test_worker_node_removed_mid_job(cluster, reference, photos, tmp_path):
    """SIGKILL every process of the worker node while it holds shards: the head finishes the job."""
    proc = start_cli(cli(str(tmp_path), photos, address=cluster.address))

    def worker_committed() -> bool:
        return any(json.loads(p.read_text() or "{}").get("worker", {}).get("node") == cluster.worker_id
                   for p in tmp_path.glob("*/*.stats.json"))

    wait_until(worker_committed, proc, "the worker node committed a shard")
    removed_at = len(list(tmp_path.glob("*/*.stats.json")))
    cluster.cluster.remove_node(cluster.worker, allow_graceful=False)
    rc, stdout, stderr = finish(proc)
    assert rc == 0, stderr[-3000:]
    assert removed_at < N_IMAGES, "the node was removed after the job had finished"
    assert "died on shard-" in stderr, "no shard was in flight on the removed node: " + stderr[-3000:]
    ds = stdout.strip().splitlines()[-1]
    stats = local_stats(ds)
    assert {s["worker"]["node"] for s in stats.values()} == {cluster.head_id, cluster.worker_id}
    assert local_outputs(ds) == reference["outputs"]
    keys = tar_keys(sorted(os.path.join(ds, n) for n in os.listdir(ds) if n.endswith(".tar")))
    assert len(keys) == len(set(keys)) == N_IMAGES * PER_IMAGE
    assert not [n for n in os.listdir(ds) if ".tmp-" in n]
