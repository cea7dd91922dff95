"""A small fault-injecting HTTP proxy for S3 tests, on 127.0.0.1, in front of a real S3 server.

Why: the faults that break a data factory's promise ("created" means created) live in the
network between the job and the store: throttling (``503 SlowDown``), an endpoint that accepts
connections and never answers.  moto's server behaves perfectly, so the tests put this proxy in
front of it and point the job at the proxy's URL (``storage_options={"client_kwargs":
{"endpoint_url": proxy.url}}`` or ``AWS_ENDPOINT_URL`` in a subprocess).

Each request is matched against the rules in order; the first matching rule with budget left
decides:

* no rule matches → forwarded to the upstream server unchanged (pass-through);
* ``slow_down(pattern, times=None)`` → ``503 SlowDown`` with S3's XML error body, for every
  matching request (``times=None``) or for the first ``times`` of them;
* ``silence(pattern)`` → the request's headers are read and nothing is ever answered, not even
  the ``100 Continue`` that a client sending ``Expect: 100-continue`` (botocore does, for
  every PUT) waits for before sending the body; the connection stays open until the client
  gives up or the proxy stops.

Every request is logged (:attr:`FaultProxy.log`: method, path, body length, what was done), so
a test can check what was sent — e.g. that a retry re-sent the whole object.
"""
from __future__ import annotations

import http.client
import http.server
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

#: headers that describe one hop, not the message (RFC 9110 §7.6.1), plus those we recompute
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                "upgrade", "expect", "content-length"}

SLOWDOWN_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 '<Message>Please reduce your request rate.</Message>'
                 '<RequestId>{rid}</RequestId><HostId>faultproxy</HostId></Error>')


@dataclass
class Rule:
    """Requests whose method matches ``method`` (None: any) and whose path (with query) matches
    ``pattern`` get ``action``; ``remaining`` counts down when set (None: forever)."""

    action: str               # "slowdown" | "silent"
    pattern: re.Pattern
    method: str | None = "PUT"
    remaining: int | None = None

    def matches(self, method: str, path: str) -> bool:
        live = self.remaining is None or self.remaining > 0
        return live and (self.method is None or self.method == method) and bool(self.pattern.search(path))


@dataclass
class Logged:
    method: str
    path: str
    body_bytes: int
    action: str               # "pass" | "slowdown" | "silent" | "upstream-down"


class FaultProxy:
    """Threaded HTTP/1.1 proxy on ``127.0.0.1:<free port>`` forwarding to ``upstream``."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    # -------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, release silenced requests and close every client connection."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------- faults
    def slow_down(self, pattern: str, *, method: str | None = "PUT", times: int | None = None) -> Rule:
        """Answer ``503 SlowDown`` to matching requests (all of them, or the first ``times``)."""
        return self._add(Rule("slowdown", re.compile(pattern), method, times))

    def silence(self, pattern: str = ".*", *, method: str | None = None) -> Rule:
        """Read matching requests and never answer them."""
        return self._add(Rule("silent", re.compile(pattern), method))

    def clear(self) -> None:
        """Back to pure pass-through."""
        with self._lock:
            self.rules.clear()

    def requests(self, method: str | None = None, pattern: str = ".*") -> list[Logged]:
        """Logged requests with that method (None: any) whose path matches ``pattern``."""
        rx = re.compile(pattern)
        with self._lock:
            return [e for e in self.log if (method is None or e.method == method) and rx.search(e.path)]

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _decide(self, method: str, path: str, body_bytes: int) -> Logged:
        with self._lock:
            action = "pass"
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    action = rule.action
                    break
            entry = Logged(method, path, body_bytes, action)
            self.log.append(entry)
            return entry

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, like a real S3 endpoint
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, True)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        self.server.proxy._track(self.connection, False)
        if self._upstream is not None:
            self._upstream.close()
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence stderr
        pass

    def handle_expect_100(self) -> bool:
        return True  # answered (or not) per request in _handle, once the rules have decided

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        entry = proxy._decide(self.command, self.path, int(self.headers.get("Content-Length") or 0))
        if entry.action == "silent":
            proxy._stopping.wait()
            self.close_connection = True
            return
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        body = self._read_body()
        if entry.action == "slowdown":  # like S3 failing after it got the body: the client must re-send it
            self._slow_down()
        else:
            self._forward(body, entry)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def _slow_down(self) -> None:
        payload = SLOWDOWN_BODY.format(rid=uuid.uuid4().hex[:16].upper()).encode()
        self.send_response(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes, entry: Logged) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            resp = self._send_upstream(headers, body)
        except OSError:
            # the upstream is gone: drop the client's connection, as a dying server would
            entry.action = "upstream-down"
            self.close_connection = True
            return
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_HEADERS:
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _send_upstream(self, headers: dict, body: bytes) -> http.client.HTTPResponse:
        """One request on this client's upstream connection; reconnect once if it went stale."""
        for attempt in range(2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body or None, headers=headers)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")
