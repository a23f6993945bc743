"""``server.replica_connections: per_request``: a replica killed under load resets no
client's connection (real ``textfleet serve`` with HAProxy, real HTTP, kill -9).

With a connection per request HAProxy never sends a request on a connection a
dead replica left behind: a new connection to it is refused and the request goes
to a live replica, or waits for one behind Ray's fallback proxy. The server
runs in a subprocess with its own Ray (tests/server_process.py), as a user starts it.
"""

from __future__ import annotations

import contextlib
import time

import psutil
import pytest
from conftest import free_port
from replica_kill import check_answers, kill_under_load, resets
from server_process import running_server, serve_log_tail

from textfleet.serve.deploy import resolve_ingress

pytestmark = pytest.mark.slow

MODEL = "steady"


def replica_of(root: int, model: str) -> int:
    """The process id of the model's one replica in the server's process tree."""
    for _ in range(60):
        for p in psutil.Process(root).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if f"ServeReplica:{model}:" in " ".join(p.cmdline()):
                    return p.pid
        time.sleep(0.5)
    raise LookupError(f"no replica of {model!r} under process {root}")


@pytest.fixture
def server(model_dir, tmp_path):
    try:
        resolve_ingress("haproxy")
    except RuntimeError as e:
        pytest.fail(f"HAProxy is part of the install: {e}")
    port = free_port()
    models = {
        "server": {
            "port": port,
            "grpc_port": free_port(),
            "metrics_export_port": free_port(),
            "replica_connections": "per_request",
        },
        "models": [
            {"name": MODEL, "model_dir": str(model_dir.path), "threads": 1}
            | {"ray_actor_options": {"num_cpus": 0}}
        ],
    }
    with running_server(tmp_path, models, "haproxy", MODEL) as running:
        yield running | {"url": f"http://127.0.0.1:{port}"}


def test_a_killed_replica_resets_no_connection(server):
    assert "a connection per request" in server["stderr"].read_text()
    pid = replica_of(server["proc"].pid, MODEL)
    counts, recovery = kill_under_load(server["url"], MODEL, pid)
    print(f"\nkill -9 under load, a connection per request: {dict(counts)}; back in {recovery} s")
    try:
        assert resets(counts) == {}, counts
        check_answers(counts, recovery)
    except AssertionError as e:
        raise AssertionError(f"{e}\nServe controller:\n{serve_log_tail(server['tree'])}") from None
