"""The shared retry loop (pairforge.retry) and its users' policies.

The loop's waits go through an injected ``sleep`` and ``clock`` (a fake clock that the fake
sleep advances), so the deadline is tested without waiting.  The PyPI fetch is tested end to end
against a local HTTP server that answers 503 a few times before serving the file.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from pairforge.retry import RetryPolicy, backoff_delay, retry_call

pytestmark = pytest.mark.timeout(60)


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


class GaveUp(Exception):
    pass


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def clock(self) -> float:
        return self.now


def flaky(failures: int, exc: type[Exception] = Transient):
    """A function that raises ``exc`` on its first ``failures`` calls, then returns the call count."""
    calls = [0]

    def fn() -> int:
        calls[0] += 1
        if calls[0] <= failures:
            raise exc(f"failure {calls[0]}")
        return calls[0]

    return fn, calls


def run(fn, policy: RetryPolicy, t: FakeTime, retried: list | None = None):
    return retry_call(fn, policy, retryable=lambda e: isinstance(e, Transient),
                      give_up=lambda e, n, el: GaveUp(f"{n} tries in {el:.1f}s: {e}"),
                      on_retry=None if retried is None else (lambda e, i, d: retried.append((i, d))),
                      sleep=t.sleep, clock=t.clock)


def test_succeeds_once_the_flaky_function_recovers():
    t, retried = FakeTime(), []
    fn, calls = flaky(3)
    assert run(fn, RetryPolicy(attempts=5, deadline_s=100, backoff_base_s=1, backoff_max_s=4), t, retried) == 4
    assert calls[0] == 4 and [i for i, _ in retried] == [1, 2, 3]
    assert [d for _, d in retried] == t.sleeps
    for n, d in enumerate(t.sleeps, 1):  # exponential, capped, jittered to 50-100 %
        ceiling = min(4, 1 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling


def test_gives_up_after_the_attempts():
    t = FakeTime()
    fn, calls = flaky(10)
    with pytest.raises(GaveUp, match="^3 tries") as exc:
        run(fn, RetryPolicy(attempts=3, deadline_s=1e9, backoff_base_s=0.1, backoff_max_s=0.1), t)
    assert calls[0] == 3 and len(t.sleeps) == 2
    assert isinstance(exc.value.__cause__, Transient) and "failure 3" in str(exc.value)


def test_gives_up_at_the_deadline_without_starting_a_late_try():
    t = FakeTime()
    fn, calls = flaky(100)
    with pytest.raises(GaveUp) as exc:
        run(fn, RetryPolicy(attempts=100, deadline_s=10, backoff_base_s=1, backoff_max_s=2), t)
    assert t.now < 10  # no wait that would end past the deadline
    assert calls[0] == len(t.sleeps) + 1 < 100
    assert f"{calls[0]} tries" in str(exc.value)


def test_a_non_retryable_error_is_raised_at_once():
    t = FakeTime()
    fn, calls = flaky(1, Fatal)
    with pytest.raises(Fatal, match="failure 1"):
        run(fn, RetryPolicy(attempts=5, deadline_s=100, backoff_base_s=1, backoff_max_s=1), t)
    assert calls[0] == 1 and t.sleeps == []


def test_policy_and_backoff_bounds():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0, deadline_s=1, backoff_base_s=1, backoff_max_s=1)
    for n in range(1, 8):
        assert min(4, 0.5 * 2 ** (n - 1)) / 2 <= backoff_delay(n, 0.5, 4) <= min(4, 0.5 * 2 ** (n - 1))


def test_storage_retry_wraps_the_shared_loop(tmp_path):
    """storage.retry: transient errors retried under StorageConfig, then StorageError; a missing
    file raised at once."""
    from pairforge.pipeline.storage import StorageConfig, StorageError, retry

    cfg = StorageConfig(attempts=3, deadline_s=30, backoff_base_s=0.001, backoff_max_s=0.002)
    fn, calls = flaky(2, ConnectionResetError)
    assert retry(fn, what="read x", config=cfg) == 3
    fn, calls = flaky(5, ConnectionResetError)
    with pytest.raises(StorageError, match=r"^read s3://b/k: gave up after 3 attempt\(s\)"):
        retry(fn, what="read s3://b/k", config=cfg)
    assert calls[0] == 3
    fn, calls = flaky(5, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        retry(fn, what="read x", config=cfg)
    assert calls[0] == 1


# ---------------------------------------------------------------- PyPI fetch over real HTTP
class _FlakyIndex(http.server.BaseHTTPRequestHandler):
    """A PEP 691 simple index for project ``demo`` holding one file; the first ``fail`` requests
    of each path answer 503."""

    payload = b"weights" * 1000
    fail = 0
    seen: dict[str, int] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        n = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if n <= self.fail:
            self.send_error(503)
            return
        if self.path == "/simple/demo/":
            host, port = self.server.server_address[:2]
            body = json.dumps({"files": [{"filename": "demo.whl", "url": f"http://{host}:{port}/files/demo.whl",
                                          "hashes": {"sha256": hashlib.sha256(self.payload).hexdigest()}}]}).encode()
        elif self.path == "/files/demo.whl":
            body = self.payload
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def flaky_index(monkeypatch):
    from pairforge.training.model.perceptual import pypi

    _FlakyIndex.seen = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyIndex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(pypi, "SIMPLE_INDEX", f"http://127.0.0.1:{server.server_address[1]}/simple")
    monkeypatch.setattr(pypi, "RETRY", RetryPolicy(attempts=3, deadline_s=30, backoff_base_s=0.01, backoff_max_s=0.02))
    try:
        yield _FlakyIndex
    finally:
        server.shutdown()
        server.server_close()


def test_pypi_fetch_retries_a_busy_index(flaky_index, tmp_path: Path):
    from pairforge.training.model.perceptual.pypi import PinnedFile, fetch_pinned

    flaky_index.fail = 2  # two 503s per request, then the answer: within 3 attempts
    pin = PinnedFile("demo", "demo.whl", hashlib.sha256(flaky_index.payload).hexdigest())
    path = fetch_pinned(pin, tmp_path)
    assert path.read_bytes() == flaky_index.payload
    assert flaky_index.seen == {"/simple/demo/": 3, "/files/demo.whl": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["demo.whl"]  # no partial file left


def test_pypi_fetch_gives_up_and_does_not_retry_a_missing_project(flaky_index, tmp_path: Path):
    from pairforge.training.model.perceptual.pypi import PinnedFile, PyPIUnreachable, fetch_pinned

    flaky_index.fail = 5
    with pytest.raises(PyPIUnreachable, match=r"after 3 attempt\(s\).*503"):
        fetch_pinned(PinnedFile("demo", "demo.whl", "0" * 64), tmp_path)
    flaky_index.fail = 0
    with pytest.raises(PyPIUnreachable, match="404"):
        fetch_pinned(PinnedFile("nope", "nope.whl", "0" * 64), tmp_path)
    assert flaky_index.seen["/simple/nope/"] == 1
    assert list(tmp_path.iterdir()) == []
