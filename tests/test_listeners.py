"""What a running ``textfleet serve`` listens on, and how fast it stops.

Each case starts the real server in a subprocess (``python -m textfleet.cli
serve``, its own Ray, separate from the session's ``ray_serve``), waits until a
V2 infer answers, then reads every listening TCP socket of the server's whole
process tree. A socket bound to a loopback address cannot accept on any other,
so the bound address is the proof; no traffic leaves loopback. Then SIGTERM:
the server must be gone within seconds, quietly, with nothing left running.

Run with ``-s`` to see the table of (process, address) of each case.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import free_port
from server_process import running_server

from textfleet.serve.deploy import resolve_ingress
from textfleet.serve.network import Listener, haproxy_template, listeners

STOP_TIMEOUT_S = 10


@pytest.fixture
def server(request, model_dir, tmp_path):
    """``textfleet serve`` with one model, host and ingress from the test's parameter."""
    ingress, host = request.param
    try:
        resolve_ingress(ingress)
    except RuntimeError as e:
        pytest.skip(str(e))
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    server = {"host": host, "port": port, "grpc_port": grpc_port}
    models = {
        "server": server | {"metrics_export_port": metrics_port},
        "models": [
            {"name": "minilm", "model_dir": str(model_dir.path), "threads": 1}
            | {"ray_actor_options": {"num_cpus": 0}}
        ],
    }
    with running_server(tmp_path, models, ingress, "minilm") as running:
        yield running | {
            "ingress": ingress,
            "host": host,
            "port": port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
        }


def admin_socket_modes(socks: list[Listener]) -> list[str]:
    """Permissions of HAProxy's admin socket, found through the config HAProxy runs."""
    import psutil

    modes = set()
    for pid in {s.pid for s in socks if s.process == "haproxy"}:
        args = psutil.Process(pid).cmdline()
        config = Path(args[args.index("-f") + 1]).read_text()
        for line in config.splitlines():
            if line.split()[:2] == ["stats", "socket"]:
                modes.add(oct(Path(line.split()[2]).stat().st_mode & 0o777))
    return sorted(modes)


def ipaddress_is_any(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def print_table(title: str, socks: list[Listener]) -> None:
    print(f"\n{title}: {len(socks)} listening sockets")
    for s in sorted(socks, key=lambda s: (s.process, s.port)):
        mark = "" if s.loopback else "   <- not loopback"
        print(f"  {s.process[:44]:<44} {s.address}{mark}")


CASES = [("haproxy", "127.0.0.1"), ("haproxy", "0.0.0.0"), ("ray-proxy", "127.0.0.1")]


@pytest.mark.parametrize("server", CASES, indirect=True, ids=lambda c: "-".join(c))
def test_listens_on_loopback_only_and_stops_quickly(server):
    proc = server["proc"]
    socks = listeners(proc.pid, expect_port=server["port"])
    print_table(f"{server['ingress']}, host {server['host']}", socks)

    exposed = [s for s in socks if not s.loopback]
    if server["host"] == "127.0.0.1":
        assert exposed == []
    else:  # exposing the server exposes its HTTP and gRPC ports, nothing else
        assert sorted((s.port, ipaddress_is_any(s.host)) for s in exposed) == sorted(
            [(server["port"], True), (server["grpc_port"], True)]
        )
    ports = {s.port for s in socks}
    assert {server["port"], server["grpc_port"], server["metrics_port"]} <= ports

    if server["ingress"] == "haproxy":
        assert admin_socket_modes(socks) == ["0o600"]

    # The CLI's list of addresses names the HTTP, metrics and HAProxy sockets as bound.
    printed = server["stdout"].read_text()
    for s in socks:
        if s.process == "haproxy" or s.port == server["metrics_port"]:
            assert s.address in printed, (s, printed)

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=STOP_TIMEOUT_S + 20)
    took = time.monotonic() - started
    print(f"stopped {took:.1f}s after SIGTERM, exit code {proc.returncode}")
    stderr = server["stderr"].read_text()
    assert took < STOP_TIMEOUT_S, stderr
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "WARNING" not in stderr.split("shutting down")[-1], stderr

    import psutil

    deadline = time.monotonic() + 5
    while (alive := [p for p in server["tree"] if psutil.pid_exists(p)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    left = []
    for pid in alive:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.name())
        except psutil.Error:
            pass
    assert left == [], f"still running after the server exited: {left}"


def test_session_ray_listens_on_loopback_only(ray_serve):
    """The Ray the other serving tests share (conftest ``ray_serve``) is local too."""
    socks = listeners(os.getpid())
    print_table("the test session's Ray", socks)
    assert socks and [s for s in socks if not s.loopback] == []


def test_haproxy_template_binds_pages_on_loopback_and_http_on_the_host():
    """Ray's own template, rewritten: no bind on every interface but HTTP's and gRPC's."""
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    for host, http_bind in [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "*"), ("::", "*")]:
        text = haproxy_template(HAPROXY_CONFIG_TEMPLATE, host)
        binds = sorted(
            line.strip()[len("bind ") :].removesuffix(" proto h2")
            for line in text.splitlines()
            if line.strip().startswith("bind ")
        )
        assert binds == sorted(
            [
                f"{http_bind}:{{{{ config.frontend_port }}}}",
                "127.0.0.1:{{ config.metrics_port }}",
                "127.0.0.1:{{ config.stats_port }}",
                f"{http_bind}:{{{{ config.grpc_frontend_port }}}}",
            ]
        ), binds
        assert "mode 600 level admin" in text and "mode 666" not in text
    with pytest.raises(ValueError, match="server.host"):
        haproxy_template(HAPROXY_CONFIG_TEMPLATE, "0.0.0.0\n  bind *:1")
    with pytest.raises(RuntimeError, match="ray-proxy"):
        haproxy_template(HAPROXY_CONFIG_TEMPLATE.replace("bind *:", "bind :"), "127.0.0.1")


def test_serve_grpc_servers_do_not_share_a_port_in_use():
    """Serve's replicas ask for no port sharing; with it on, a direct gRPC port could
    bind beside another server's replica on the same port and get half its calls."""
    import asyncio

    from ray.serve._private.grpc_util import gRPCGenericServer

    from textfleet.serve import network

    network._grpc_port_sharing_as_asked()

    async def second_bind_refused() -> bool:
        first = gRPCGenericServer(lambda *a: None, extra_options=[("grpc.so_reuseport", "0")])
        port = first.add_insecure_port("127.0.0.1:0")
        await first.start()
        try:
            second = gRPCGenericServer(lambda *a: None, extra_options=[("grpc.so_reuseport", "0")])
            try:
                second.add_insecure_port(f"127.0.0.1:{port}")
            except RuntimeError:
                return True
            return False
        finally:
            await first.stop(None)

    assert asyncio.run(second_bind_refused())
