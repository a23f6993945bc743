"""Ports picked for a server's own listeners (HAProxy's pages, Serve's fallback
proxy, the test servers): free, distinct, and outside the range the kernel hands
to any process that binds port 0, so none of Ray's workers starting meanwhile can
take one before its listener binds it."""

from __future__ import annotations

import socket

from textfleet.serve import network


def test_ports_are_free_distinct_and_below_the_ephemeral_range():
    low = network._ephemeral_low()
    ports = [network.free_loopback_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < min(low, 30000) for p in ports), ports  # not a replica's
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_picked():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # Bind port 0 many times meanwhile: those ports come from the ephemeral range.
        ephemeral = set()
        for _ in range(20):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ephemeral.add(s.getsockname()[1])
        picked = {network.free_loopback_port() for _ in range(50)}
        assert not picked & (ephemeral | {taken.getsockname()[1]})
