"""S3 faults on loopback: "created" must mean created, and a broken store must not hang a job.

A fault-injecting proxy (tests/faultproxy.py) sits in front of moto's real S3 server and answers
``503 SlowDown`` or nothing at all; a second, private moto server is stopped in the middle of a
job.  Each case checks what is really in the bucket (through the healthy session server), not
only what the job says.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from faultproxy import FaultProxy

from pairforge.pipeline import SynthConfig, synth
from pairforge.pipeline.storage import ENV_VARS, StorageConfig, s3_options

# 12 photos → 3 shards
SMALL = SynthConfig.from_dict({"dataset": {"images_per_shard": 4, "patch": {"size": 64, "per_image": 2}},
                               "run": {"progress": False}})
INLINE = SMALL.replace(**{"run.executor": "inline"})
SHARD1_PUT = r"/shard-000001\.tar(\?|$)"

#: short but not twitchy: moto answers in milliseconds, the job shares 2 cores with the servers
FAST = {"connect_timeout": "2", "read_timeout": "5", "attempts": "4", "deadline_s": "20",
        "backoff_base_s": "0.05", "backoff_max_s": "0.2"}


@pytest.fixture
def fault_proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def fast_storage(monkeypatch):
    """Short timeouts and retries for jobs run in this process, through the documented variables."""
    for name, value in FAST.items():
        monkeypatch.setenv(ENV_VARS[name], value)


def via(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}}


def objects(s3_server, dataset_url: str) -> dict[str, bytes]:
    """Every object under a dataset folder, read from the healthy server: name -> content."""
    bucket, prefix = dataset_url[len("s3://"):].split("/", 1)
    client = s3_server.client()
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listing}


def sha256s(found: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(b).hexdigest() for n, b in found.items() if n.endswith(".tar") or n == "manifest.json"}


def assert_markers_match_tars(found: dict[str, bytes]) -> None:
    """The commit invariant: a stats file exists only beside a tar of exactly its recorded size."""
    for name, data in found.items():
        if name.endswith(".stats.json"):
            tar = name[: -len(".stats.json")] + ".tar"
            assert tar in found and len(found[tar]) == json.loads(data)["bytes"], name


def test_storage_config_from_environment_bounds_the_client():
    cfg = StorageConfig.from_env({ENV_VARS["read_timeout"]: "7.5", ENV_VARS["attempts"]: "3"})
    assert (cfg.read_timeout, cfg.attempts, cfg.connect_timeout) == (7.5, 3, StorageConfig().connect_timeout)
    with pytest.raises(ValueError, match="PAIRFORGE_S3_DEADLINE"):
        StorageConfig.from_env({ENV_VARS["deadline_s"]: "soon"})
    with pytest.raises(ValueError, match="attempts"):
        StorageConfig(attempts=0)
    opts = s3_options({"config_kwargs": {"max_pool_connections": 4}}, cfg)["config_kwargs"]
    assert opts["read_timeout"] == 7.5 and opts["connect_timeout"] == cfg.connect_timeout
    assert opts["retries"]["total_max_attempts"] == 1 and opts["max_pool_connections"] == 4
    assert cfg.upload_try_limit(50_000_000) == cfg.client_attempts * (cfg.connect_timeout + cfg.read_timeout + 50)
    for n in range(1, 12):  # exponential, capped, jittered down to half
        ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (n - 1))
        assert ceiling / 2 <= cfg.backoff(n) <= ceiling


def test_manifest_check_asks_the_store_for_every_shard(s3_server):
    """What the driver checks right before writing a manifest: each tar, by HEAD, at its recorded size."""
    from pairforge.pipeline.shards import unconfirmed_shards

    dataset = f"{s3_server.make_bucket()}/pairs/ds"
    bucket, prefix = dataset[len("s3://"):].split("/", 1)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key=f"{prefix}/shard-000000.tar", Body=b"t" * 1024)
    client.put_object(Bucket=bucket, Key=f"{prefix}/shard-000001.tar", Body=b"t" * 512)  # truncated
    stats = {f"shard-00000{i}.tar": {"bytes": 1024} for i in range(3)}                   # 2: never stored

    problems = unconfirmed_shards(dataset, stats)
    assert sorted(problems) == ["shard-000001.tar", "shard-000002.tar"]
    assert f"{dataset}/shard-000001.tar has 512 bytes in the store, its stats record 1024" == problems["shard-000001.tar"]
    assert problems["shard-000002.tar"] == f"{dataset}/shard-000002.tar is missing from the store"


def test_persistent_slowdown_fails_the_job_and_resume_redoes_only_that_shard(s3_server, fault_proxy, fast_storage,
                                                                             photo_dir):
    out = f"{s3_server.make_bucket()}/pairs"
    fault_proxy.slow_down(SHARD1_PUT)
    res = synth(str(photo_dir), out, INLINE, storage_options=via(fault_proxy.url))

    assert not res.ok and res.manifest is None
    assert list(res.failed) == ["shard-000001.tar"]
    error = res.failed["shard-000001.tar"]
    assert f"{res.url}/shard-000001.tar" in error and "SlowDown" in error, error
    found = objects(s3_server, res.url)
    assert "manifest.json" not in found
    assert "shard-000001.tar" not in found and "shard-000001.stats.json" not in found
    assert {"job.json", "shard-000000.tar", "shard-000000.stats.json", "shard-000002.tar",
            "shard-000002.stats.json"} <= set(found)
    assert_markers_match_tars(found)
    # every retry sent the whole tar again (never a re-close of a dead upload), within the config's
    # bound, in two runs of the shard (the store took the outage probe's write: one more run)
    puts = fault_proxy.requests("PUT", SHARD1_PUT)
    assert 2 * 4 <= len(puts) <= 2 * 4 * StorageConfig().client_attempts
    assert len({p.body_bytes for p in puts}) == 1 and puts[0].body_bytes > 10_000

    fault_proxy.clear()
    seen = len(fault_proxy.log)
    again = synth(str(photo_dir), out, INLINE.replace(**{"run.resume": True}), storage_options=via(fault_proxy.url))
    assert again.ok and again.status == "resumed" and again.shards_written == ["shard-000001.tar"]
    tar_puts = {p.path.rsplit("/", 1)[-1].split("?")[0] for p in fault_proxy.log[seen:]
                if p.method == "PUT" and ".tar" in p.path}
    assert tar_puts == {"shard-000001.tar"}

    clean = synth(str(photo_dir), f"{s3_server.make_bucket()}/pairs", INLINE)
    assert clean.dataset_id == again.dataset_id
    assert sha256s(objects(s3_server, again.url)) == sha256s(objects(s3_server, clean.url))


def test_slowdown_burst_longer_than_the_client_retries_is_outlasted(s3_server, fault_proxy, fast_storage,
                                                                   monkeypatch, photo_dir):
    # 30 refusals: more than botocore's and s3fs's own retries together (5 x 5), which is where
    # the old writer gave up on the upload yet reported the shard written
    fault_proxy.slow_down(SHARD1_PUT, times=30)
    monkeypatch.setenv(ENV_VARS["attempts"], "25")
    res = synth(str(photo_dir), f"{s3_server.make_bucket()}/pairs", INLINE, storage_options=via(fault_proxy.url))

    assert res.ok, res.failed
    found = objects(s3_server, res.url)
    assert "manifest.json" in found
    for shard in res.manifest["shards"]:
        assert len(found[shard["name"]]) == shard["bytes"]
        assert hashlib.sha256(found[shard["name"]]).hexdigest() == shard["sha256"]
    assert_markers_match_tars(found)
    puts = fault_proxy.requests("PUT", SHARD1_PUT)
    assert [p.action for p in puts] == ["slowdown"] * 30 + ["pass"]
    assert {p.body_bytes for p in puts} == {res.manifest["shards"][1]["bytes"]}


def test_silent_endpoint_fails_the_cli_within_a_bounded_time(s3_server, fault_proxy, photo_dir):
    out = f"{s3_server.make_bucket()}/pairs"
    fault_proxy.silence(r"\.tar(\?|$)", method="PUT")  # no shard upload is ever answered
    short = {"connect_timeout": "1", "read_timeout": "1", "attempts": "3", "deadline_s": "3",
             "backoff_base_s": "0.05", "backoff_max_s": "0.2"}
    env = {**os.environ, "AWS_ENDPOINT_URL": fault_proxy.url, "AWS_ENDPOINT_URL_S3": fault_proxy.url,
           **{ENV_VARS[k]: v for k, v in short.items()}}
    cmd = [sys.executable, "-m", "pairforge.clusters.cli", "synth", "--source", str(photo_dir), "--out", out,
           "--executor", "inline", "--patch-size", "64", "--patches-per-image", "2", "--images-per-shard", "4",
           "--no-progress"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("pairforge synth still waiting on a silent endpoint after 120 s")
    elapsed = time.monotonic() - t0

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert elapsed < 60
    assert "created" not in proc.stdout and "pairs in" not in proc.stdout
    assert "failed:" in proc.stderr
    assert re.search(rf"shard-000000\.tar: StorageError: upload {out}/\S+/shard-000000\.tar: gave up after .*"
                     r"did not answer", proc.stderr), proc.stderr[-3000:]
    assert out not in proc.stdout  # a failed job prints no dataset URL on stdout; stderr names its folder
    dataset = re.search(r"not committed in (\S+);", proc.stderr).group(1)
    assert dataset.startswith(out + "/")
    found = objects(s3_server, dataset)
    assert "job.json" in found and "manifest.json" not in found and not [n for n in found if n.endswith(".tar")]


def test_s3_server_stopped_mid_job_fails_without_manifest(s3_server, fast_storage, monkeypatch, photo_dir):
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv(ENV_VARS["deadline_s"], "8")  # how long a store that took no write is waited for

    # moto keeps its buckets in process-wide state shared by every server in this process: the
    # job talks to `private`, the test inspects the bucket through the session server, which
    # keeps running after `private` is stopped
    private = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    private.start()
    host, port = private.get_host_and_port()
    out = f"{s3_server.make_bucket()}/pairs"
    result: dict = {}

    def job() -> None:
        try:
            result["res"] = synth(str(photo_dir), out, INLINE.replace(**{"dataset.images_per_shard": 2}),
                                  storage_options=via(f"http://{host}:{port}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            result["error"] = exc

    runner = threading.Thread(target=job, daemon=True)
    stopped = False
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline and not _first_commit(s3_server, out):
            time.sleep(0.005)
        private.stop()  # one shard of six is committed: from now on the store is gone
        stopped = True
        runner.join(60)
        assert not runner.is_alive(), "the job did not end within 60 s of its S3 server stopping"
    finally:
        if not stopped:
            private.stop()
    assert "error" not in result, repr(result.get("error"))
    res = result["res"]

    assert not res.ok and res.status == "failed" and res.manifest is None
    errors = [e for e in res.failed.values() if "gave up" in e]
    assert errors and all(res.url in e and "Could not connect" in e for e in errors), res.failed
    # it was waited for (the outage policy) up to the deadline, then the run stopped
    not_run = [e for e in res.failed.values() if e.startswith("not run: ")]
    assert not_run and all("the store took no writes for 8s" in e for e in not_run), res.failed
    found = objects(s3_server, res.url)
    assert "manifest.json" not in found and len([n for n in found if n.endswith(".tar")]) < 6
    assert_markers_match_tars(found)


def test_s3_server_restarted_mid_job_is_waited_out(s3_server, fast_storage, photo_dir, caplog):
    """The server goes away for longer than one object's retries and comes back on its port: the
    driver waits for it, the shard it failed runs again, and the dataset is the uninterrupted one."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    out = f"{s3_server.make_bucket()}/pairs"
    cfg = INLINE.replace(**{"dataset.images_per_shard": 2})
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(res=synth(str(photo_dir), out, cfg,
                                                                     storage_options=via(f"http://127.0.0.1:{port}"))),
                              daemon=True)
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline and not _first_commit(s3_server, out):
            time.sleep(0.005)
        server.stop()
        time.sleep(2.0)  # four tries with 0.05-0.2 s backoff give up in well under a second
    finally:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)  # moto's state is per process
        server.start()
    try:
        runner.join(60)
        assert not runner.is_alive(), "the job did not end within 60 s of its S3 server coming back"
    finally:
        server.stop()
    res = result["res"]

    assert res.ok, res.failed
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed while the store was down" in m and "Could not connect" in m for m in messages), messages
    assert any("answers again" in m for m in messages)
    clean = synth(str(photo_dir), f"{s3_server.make_bucket()}/pairs", cfg)
    assert sha256s(objects(s3_server, res.url)) == sha256s(objects(s3_server, clean.url))


def test_outage_wait_is_bounded_and_counts_every_shard_in_flight():
    """The outage policy on a fake clock: which failures are the store's, and when waiting ends."""
    from pairforge.pipeline.execution import DOWN, FINAL, RETRY, _Outage

    now = [0.0]
    up = [True]
    outage = _Outage(lambda: up[0], budget_s=10.0, delay=lambda i: 1.0, clock=lambda: now[0],
                     sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert outage.verdict(submitted_at=0.0) == FINAL           # the store takes writes: the object's own
    up[0] = False
    now[0] = 5.0

    def back_after_3s(s: float) -> None:
        now[0] += s
        up[0] = now[0] >= 8.0
    outage.sleep = back_after_3s
    assert outage.verdict(submitted_at=4.0) == RETRY           # waited 3 s, then it answered
    assert outage.verdict(submitted_at=4.5) == RETRY           # in flight during the outage: the store's fault
    assert outage.verdict(submitted_at=9.0) == FINAL           # started after it: the object's own again
    up[0] = False
    outage.sleep = lambda s: now.__setitem__(0, now[0] + s)
    assert outage.verdict(submitted_at=9.0) == DOWN            # no commit since 5.0: 10 s are spent by 15.0
    assert now[0] == 15.0
    outage.committed()                                         # a commit starts a fresh budget
    up[0] = True
    assert outage.verdict(submitted_at=16.0) == FINAL


def test_an_outage_that_ends_before_the_probe_costs_no_shard():
    """A store that comes back between an upload giving up and the driver's probe: the probe
    finds it taking writes (FINAL: it looks like the object's own failure). The shard runs once
    more; only a second FINAL failure is final. Before, the first one was, and a blip that ended
    at the wrong moment failed the job."""
    from pairforge.pipeline.execution import _Failures, _Outage
    from pairforge.pipeline.storage import StorageError
    from pairforge.pipeline.worker import ShardTask

    failures = _Failures(max_retries=0, storage_failure_limit=2, outage=_Outage(lambda: True, 10.0, lambda i: 0.0))
    task = ShardTask(1, "shard-000001.tar")
    error = StorageError("upload s3://b/shard-000001.tar: gave up after 3 attempt(s)")
    assert failures.should_retry(task, error, submitted_at=0.0)            # one more run
    assert not failures.stop and not failures.failed
    assert not failures.should_retry(task, error, submitted_at=1.0)        # twice: the object's own
    assert failures.failed == {"shard-000001.tar": f"StorageError: {error}"} and failures.storage_streak == 1


def _first_commit(s3_server, out: str) -> bool:
    bucket, prefix = out[len("s3://"):].split("/", 1)
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return any(o["Key"].endswith(".stats.json") for o in listing.get("Contents", []))


def test_ray_workers_follow_the_drivers_storage_config(ray_local, s3_server, fault_proxy, photo_dir):
    """Actors get the driver's StorageConfig (not their own environment), and a shard that failed on
    storage is not re-run on top of its own retries."""
    cfg = StorageConfig(connect_timeout=2, read_timeout=5, attempts=3, deadline_s=20, backoff_base_s=0.05,
                        backoff_max_s=0.2)
    fault_proxy.slow_down(SHARD1_PUT)
    two_workers = SMALL.replace(**{"run.workers": 2, "run.max_retries": 2})
    res = synth(str(photo_dir), f"{s3_server.make_bucket()}/pairs", two_workers, storage_options=via(fault_proxy.url),
                storage_config=cfg)

    assert not res.ok and list(res.failed) == ["shard-000001.tar"]
    assert "gave up after 3 attempt(s)" in res.failed["shard-000001.tar"]
    assert 2 * 3 <= len(fault_proxy.requests("PUT", SHARD1_PUT)) <= 2 * 3 * cfg.client_attempts
    found = objects(s3_server, res.url)
    assert {"shard-000000.stats.json", "shard-000002.stats.json"} <= set(found) and "manifest.json" not in found
    assert_markers_match_tars(found)
