"""HAProxy's rewrite of the shared routes, against a real HAProxy and Ray's own config.

Ray's HAProxy template, with all of textfleet's rewrites (as ``setup_worker``
applies them), is rendered by Ray's own generator for three backends: a
model ``mini`` with a running replica, a model ``starting`` without one, an
application at ``/v2/models/alien`` whose ingress is not ``ModelServer``, and
the gateway at ``/``. The "replica" and the "gateway" are two echo servers
that answer which path and how many body bytes they got. No Ray runs: this is
the rewrite alone, every case in milliseconds; tests/test_model_routes.py runs
the same routes through a real Ray Serve.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
from conftest import free_port

from textfleet.serve import haproxy_routes, ingress_policy, network

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")

BUFSIZE = 16384


class Echo(BaseHTTPRequestHandler):
    """Answers ``{"who", "path", "body_bytes"}``; a body declared over 1 MB is not read."""

    protocol_version = "HTTP/1.1"

    def do_any(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            got = b""
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                got += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            got = self.rfile.read(n) if n <= 1_000_000 else b""
        body = json.dumps({"who": self.server.who, "path": self.path, "body_bytes": len(got)})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if n > 1_000_000:
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_any

    def log_message(self, *args) -> None:
        pass


def echo_server(who: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.who = who
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def render_config(path, port: int, replica_port: int, gateway_port: int) -> None:
    """Ray's generator, Ray's template with textfleet's three rewrites."""
    from ray.serve._private import haproxy as h
    from ray.serve.config import HTTPOptions

    template = network.haproxy_template(h.HAPROXY_CONFIG_TEMPLATE, "127.0.0.1")
    template = haproxy_routes.haproxy_template(ingress_policy.haproxy_template(template))
    cfg = h.HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=port),
        socket_path=str(path.parent / "admin.sock"),
        stats_port=free_port(),
        metrics_port=free_port(),
        metrics_enabled=False,
        timeout_connect_s=5,
        timeout_client_s=60,
        timeout_server_s=60,
        bufsize=BUFSIZE,
        has_received_routes=True,
        has_received_servers=True,
    )

    def backend(app: str, prefix: str, ingress: str, port: int | None):
        servers = [h.ServerConfig(name="r1", host="127.0.0.1", port=port)] if port else []
        return h.BackendConfig(
            name=f"http-{app}",
            path_prefix=prefix,
            servers=servers,
            app_name=app,
            ingress_deployment_name=ingress,
        )

    backends = [
        backend("mini", "/v2/models/mini", "ModelServer", replica_port),
        backend("starting", "/v2/models/starting", "ModelServer", None),
        backend("alien", "/v2/models/alien", "Other", replica_port),
        backend("textfleet-gateway", "/", "Gateway", gateway_port),
    ]
    api = h.HAProxyApi(cfg, {b.name: b for b in backends}, str(path))
    original = h.HAPROXY_CONFIG_TEMPLATE
    h.HAPROXY_CONFIG_TEMPLATE = template  # what setup_worker does in Ray's workers
    try:
        api._generate_config_file_internal()
    finally:
        h.HAPROXY_CONFIG_TEMPLATE = original


@contextlib.contextmanager
def haproxy_front(folder):
    """HAProxy on a free port in front of the echo 'replica' and 'gateway'."""
    replica, gateway = echo_server("replica"), echo_server("gateway")
    port = free_port()
    path = folder / "haproxy.cfg"
    render_config(path, port, replica.server_address[1], gateway.server_address[1])
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield {"port": port, "client": client, "config": path.read_text()}
    finally:
        proc.terminate()
        proc.wait(10)
        for server in (replica, gateway):
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    with haproxy_front(tmp_path_factory.mktemp("haproxy")) as running:
        yield running


def where(front, path: str, body: bytes | None = None, method: str = "POST", **kw) -> tuple:
    r = front["client"].request(method, path, content=body, **kw)
    assert r.status_code == 200, r.text
    got = r.json()
    return got["who"], got["path"]


def read_reply(s: socket.socket) -> bytes:
    """One HTTP reply off a raw socket: its head and ``Content-Length`` bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")[1:]
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


def js(**fields) -> bytes:
    return orjson.dumps(fields)


# ---------------------------------------------------------------- the rewrite


@pytest.mark.parametrize(
    "path, body, want",
    [
        ("/v1/embeddings", js(model="mini", input=["x"]), "/v2/models/mini/v1/embeddings"),
        ("/v1/rerank", js(query="q", documents=["d"], model="mini"), "/v2/models/mini/v1/rerank"),
        ("/v1/embeddings?a=1", js(model="mini"), "/v2/models/mini/v1/embeddings?a=1"),
        ("/v1/models/mini:predict", js(instances=["x"]), "/v2/models/mini/v1/models/mini:predict"),
        # JSON escapes are decoded before the name is checked: still a plain name.
        ("/v1/embeddings", b'{"model": "min\\u0069"}', "/v2/models/mini/v1/embeddings"),
        # A body naming the model twice: HAProxy takes the first (the replica checks).
        ("/v1/embeddings", b'{"model": "mini", "model": "x"}', "/v2/models/mini/v1/embeddings"),
    ],
)
def test_shared_routes_naming_a_running_model_go_to_its_replica(front, path, body, want):
    assert where(front, path, body) == ("replica", want)


@pytest.mark.parametrize(
    "model",
    [
        "other",  # unknown: the gateway's 404 names the served models
        "starting",  # no running replica: the gateway's 503 says why
        "alien",  # an application that is not a textfleet model
        "../x",
        "..",
        ".mini",
        "a/b",
        "mini/../x",
        "mini/",
        "%2e%2e",
        "mini%2f..",
        "mini ",
        " mini",
        "mini\n",
        "mini\u0000",
        "mini:predict",
        "m" * 129,
        "",
        1,
        True,
        None,
        ["mini"],
        {"model": "mini"},
    ],
    ids=repr,
)
def test_anything_else_in_model_goes_to_the_gateway_unchanged(front, model):
    for path in ("/v1/embeddings", "/v1/rerank"):
        assert where(front, path, orjson.dumps({"model": model})) == ("gateway", path)


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": {"model": "mini"}}',  # not the top-level field
        b'[{"model": "mini"}]',
        b'{"model": "other", "model": "mini"}',
        b'{"model": "mini\\u002f.."}',  # an escaped "/"
        b"model=mini",
        b'"mini"',
        b"",
    ],
)
def test_bodies_without_a_top_level_model_go_to_the_gateway(front, body):
    assert where(front, "/v1/embeddings", body) == ("gateway", "/v1/embeddings")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/other:predict",
        "/v1/models/starting:predict",
        "/v1/models/alien:predict",
        "/v1/models/..%2Fmini:predict",
        "/v1/models/mini%2F..:predict",
        "/v1/models/%2e%2e:predict",
        "/v1/models/%6dini:predict",
        "/v1/models/.mini:predict",
        "/v1/models/mini:predict/x",
        "/v1/models/mini:predictx",
        "/v1/models/mini/x:predict",
        "/v1/models/mini",
        "/v1/models/mini:explain",
        "/v1//models/mini:predict",
    ],
)
def test_other_v1_paths_go_to_the_gateway_unchanged(front, path):
    assert where(front, path, js(instances=["x"])) == ("gateway", path)


def test_only_posts_are_rewritten(front):
    for path in ("/v1/embeddings", "/v1/models/mini:predict"):
        assert where(front, path, js(model="mini"), method="PUT") == ("gateway", path)
        assert where(front, path, method="GET") == ("gateway", path)


def test_v2_and_other_paths_are_untouched(front):
    body = js(model="mini")
    assert where(front, "/v2/models/mini/infer", body) == ("replica", "/v2/models/mini/infer")
    assert where(front, "/v2/health/ready", method="GET") == ("gateway", "/v2/health/ready")
    assert where(front, "/v1/embeddingsx", body) == ("gateway", "/v1/embeddingsx")


# ---------------------------------------------------------------- bodies and HAProxy's buffer


def test_a_body_larger_than_the_buffer_goes_whole_to_the_gateway(front):
    body = js(model="mini", input=["x" * BUFSIZE])
    r = front["client"].post("/v1/embeddings", content=body).json()
    assert (r["who"], r["path"], r["body_bytes"]) == ("gateway", "/v1/embeddings", len(body))
    # What the front door holds until it is whole is rewritten.
    body = js(model="mini", input=["x" * (ingress_policy.BUFFERED_BODY_BYTES - 100)])
    r = front["client"].post("/v1/embeddings", content=body).json()
    assert (r["who"], r["body_bytes"]) == ("replica", len(body))


def test_a_chunked_body_goes_to_the_gateway(front):
    def chunks():
        yield b'{"model": '
        yield b'"mini"}'

    r = front["client"].post("/v1/embeddings", content=chunks()).json()
    assert (r["who"], r["path"], r["body_bytes"]) == ("gateway", "/v1/embeddings", 17)


def test_a_huge_declared_length_is_passed_on_at_once(front):
    """No wait for a body that cannot fit: the gateway (where the size limit is a
    413 before the body is read) gets it while the client has sent one byte."""
    with socket.create_connection(("127.0.0.1", front["port"]), timeout=10) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        start = time.perf_counter()
        reply = read_reply(s)
        took = time.perf_counter() - start
    assert b'"who": "gateway"' in reply and took < 1, (reply, took)


def test_expect_100_continue_is_answered_and_rewritten(front):
    body = js(model="mini", input=["x"])
    with socket.create_connection(("127.0.0.1", front["port"]), timeout=10) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert read_reply(s).startswith(b"HTTP/1.1 100")
        s.sendall(body)
        reply = read_reply(s)
    assert b'"path": "/v2/models/mini/v1/embeddings"' in reply, reply


def test_a_body_sent_in_pieces_is_waited_for_and_rewritten(front):
    body = js(model="mini", input=["x"])
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", front["port"]), timeout=10) as s:
        s.sendall(head % len(body) + body[:5])
        time.sleep(0.5)
        s.sendall(body[5:])
        reply = read_reply(s)
    assert b'"path": "/v2/models/mini/v1/embeddings", "body_bytes": 30' in reply, reply


def test_the_rules_name_the_running_models_only(front):
    rules = [line.strip() for line in front["config"].splitlines() if "tf_served" in line]
    assert rules == [
        "acl tf_served always_false",
        "acl tf_served var(txn.tf_prefix) -m str /v2/models/mini",
        "http-request set-path %[var(txn.tf_prefix)]%[path] if tf_name_ok tf_served",
    ]
    # before Ray's routing, so use_backend and Ray's metrics see the new path
    text = front["config"]
    assert text.index("set-path") < text.index("acl is_http-mini") < text.index("\n    use_backend")


def test_a_template_without_the_anchor_is_refused():
    with pytest.raises(RuntimeError, match="ray-proxy"):
        haproxy_routes.haproxy_template("frontend http_frontend\n    bind :1\n")
