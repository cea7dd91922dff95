"""One live `pairforge synth` per dataset: a second one into the same output exits 3 naming the
first (pid, host, since when) instead of doing all the work again; after the first ends, a
re-run is a no-op.  Locally the lock is an flock on ``DATASET/synth.lock``; on S3 a lease object
at the same key, which a job takes over once its holder's heartbeat is stale.

The first job is frozen (SIGSTOP) right after it has taken the lock, so "a live job holds the
dataset" is certain however slow the machine is; SIGCONT lets it finish.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--executor", "inline", "--patch-size", "64", "--patches-per-image", "2", "--images-per-shard", "4",
         "--no-progress", "--device", "cpu"]

pytestmark = pytest.mark.timeout(600)


def synth(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIRFORGE, "synth", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*PAIRFORGE, "synth", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def hold_when_locked(proc: subprocess.Popen, lock_record, timeout_s: float = 240) -> None:
    """Freeze ``proc`` once ``lock_record()`` (the lock's owner record, or None) names it."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = lock_record()
        if record and record.get("pid") == proc.pid:
            os.kill(proc.pid, signal.SIGSTOP)
            return
        if proc.poll() is not None:
            pytest.fail("the first synth ended without holding the dataset: " + proc.stderr.read()[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the first synth did not take the dataset's lock in time")
        time.sleep(0.02)


def local_record(out: Path):
    def read() -> dict | None:
        for lock in out.glob("*/synth.lock"):
            try:
                return json.loads(lock.read_text() or "null")
            except (OSError, ValueError):
                return None
        return None
    return read


def second_refused_then_first_finishes(first: subprocess.Popen, args: list[str]) -> None:
    try:
        second = synth(*args)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 3, second.stdout + second.stderr[-3000:]
    assert second.stdout == ""
    (line,) = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert "is in use by" in line and f"pid {first.pid} on host {socket.gethostname()}" in line, line
    assert "(started 20" in line and "UTC" in line, line  # since when

    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert out.startswith("created: "), out


def test_a_second_synth_into_a_held_dataset_exits_3_naming_the_first(photo_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--source", str(photo_dir), "--out", str(out), *SMALL]
    first = start(*args)
    try:
        hold_when_locked(first, local_record(out))
        second_refused_then_first_finishes(first, args)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    (ds,) = [p for p in out.iterdir() if p.is_dir()]
    assert (ds / "synth.lock").read_text() == ""  # released: the record is cleared

    again = synth(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("reused: ") and again.stdout.strip().splitlines()[-1] == str(ds)


@pytest.mark.slow  # four CLI runs against moto: ~75 s on 2 loaded cores
def test_s3_lease_refuses_a_second_synth_and_a_stale_lease_is_taken_over(s3_server, photo_dir):
    bucket = s3_server.make_bucket()
    name = bucket[len("s3://"):]
    client = s3_server.client()

    def lease(prefix: str):
        def read() -> dict | None:
            for o in client.list_objects_v2(Bucket=name, Prefix=prefix).get("Contents", []):
                if o["Key"].endswith("/synth.lock"):
                    try:
                        return json.loads(client.get_object(Bucket=name, Key=o["Key"])["Body"].read())
                    except Exception:  # noqa: BLE001 - deleted between the listing and the read
                        return None
            return None
        return read

    args = ["--source", str(photo_dir), "--out", f"{bucket}/pairs", *SMALL]
    first = start(*args)
    try:
        hold_when_locked(first, lease("pairs/"))
        second_refused_then_first_finishes(first, args)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert lease("pairs/")() is None  # a clean end deletes the lease

    # a holder on another host whose heartbeat stopped long ago: its lease has expired
    dry = json.loads(synth("--source", str(photo_dir), "--out", f"{bucket}/other", *SMALL, "--dry-run", "--json").stdout)
    key = dry["url"][len(bucket) + 1:] + "/synth.lock"
    old = time.time() - 3600
    client.put_object(Bucket=name, Key=key, Body=json.dumps(
        {"host": "gone-host", "pid": 4242, "started": old, "command": "pairforge synth ...", "heartbeat": old,
         "token": "x", "stale_after_s": 120}).encode())
    taken = synth("--source", str(photo_dir), "--out", f"{bucket}/other", *SMALL)
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert taken.stdout.startswith("created: ")
    assert "took over dataset" in taken.stderr and "pid 4242 on host gone-host" in taken.stderr, taken.stderr
    assert lease("other/")() is None
