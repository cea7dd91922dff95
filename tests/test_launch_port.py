"""The ranks' rendezvous port is drawn outside the ephemeral range other processes draw from.

Two trainings started side by side once failed with EADDRINUSE: both asked the OS for a free
port (``bind(0)``), which hands out ephemeral ports that any other process may take next.
"""
from __future__ import annotations

import socket

from pairforge.training.runtime.launch import free_port


def _ephemeral_range() -> range:
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except OSError:
        low, high = 32768, 60999
    return range(low, high + 1)


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    ephemeral = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 10  # drawn at random, not one fixed port
    for port in ports:
        assert port not in ephemeral
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_returned():
    held = []
    try:
        for _ in range(30):
            port = free_port()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        assert len({s.getsockname()[1] for s in held}) == 30
    finally:
        for s in held:
            s.close()
