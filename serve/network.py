"""Where a local textfleet server listens: the HTTP port on the server's host, the rest on loopback.

A Ray started the usual way binds its control plane (GCS, raylet, every
worker's gRPC port, the agents, the metrics agent) on all interfaces, and
anyone who reaches the GCS port can run code as the server's user. Ray keeps
them on loopback when its node address is loopback, which is what Ray itself
does where it supports one machine only (macOS, Windows): ``local_ray_env``
turns that mode on, ``start_ray`` (serve/deploy.py) asks for node address
127.0.0.1 and checks it got it.

Three listeners ignore the node address, so every Ray worker of a local
server runs ``setup_worker`` first (Ray's ``worker_process_setup_hook``):

- Ray's HAProxy config template binds HAProxy's stats page and Prometheus
  page on every interface without login and makes the admin socket
  world-writable (``mode 666``): our copy binds both pages on loopback, makes
  the socket owner-only, and binds the HTTP frontend on the server's host
  (``TEXTFLEET_HTTP_HOST``), which lets Serve's own HTTP host stay loopback:
  that is where each replica's direct-ingress port listens, reached by HAProxy
  only. HAProxy's gRPC frontend (``server.grpc_port``) binds the server's host
  too; Ray would bind it on Serve's HTTP host.
- A replica's inter-deployment gRPC server binds ``[::]:0``; we bind it on
  loopback (the node address, where other actors look for it).
- Serve's gRPC ingress servers bind ``[::]:<port>``: the public one (Ray's
  proxy, under ``ingress: ray-proxy``) binds the server's host instead, the
  ones only HAProxy reaches (each replica's direct ingress, the fallback
  proxy) bind loopback.

HAProxy's files (its config, admin socket, server state, metrics socket) go
into a directory of this server's own, readable by its user only, instead of
Ray's shared ``/tmp/haproxy-serve``, and its stats and Prometheus pages and
Serve's fallback proxy take free loopback ports instead of Ray's fixed 8404,
9101 and 8500, so two servers on one machine do not collide (``haproxy_env``).

``listeners`` lists what a server's process tree really listens on (the
CLI prints it, the tests assert on it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"

HTTP_HOST_ENV = "TEXTFLEET_HTTP_HOST"
"""The HTTP frontend's bind address, for ``setup_worker`` in HAProxy's manager."""


# Ray's switch for a single-machine Ray (on by default on macOS and Windows):
# the node address becomes loopback, and ray.init(_node_ip_address="127.0.0.1")
# is no longer replaced by the machine's outward address.
LOCAL_RAY_ENV: dict[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# The lines of Ray's HAProxy template (ray/serve/_private/haproxy_templates.py)
# that bind or expose something, and what ours says instead. Checked
# by `haproxy_template` so a Ray release that changes them fails loudly at
# start instead of silently listening everywhere again.
_ADMIN_SOCKET = "stats socket {{ config.socket_path }} mode 666 level admin"
_METRICS_BIND = "    bind :{{ config.metrics_port }}\n"
_STATS_BIND = "  bind *:{{ config.stats_port }}\n"
_HTTP_BIND = "    bind {{ config.frontend_host }}:{{ config.frontend_port }}\n"
_GRPC_BIND = "    bind {{ config.grpc_frontend_host }}:{{ config.grpc_frontend_port }} proto h2\n"

# A bind address we write into HAProxy's config: an IP or a host name, nothing else.
_HOST_RE = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


def haproxy_frontend_host(host: str) -> str:
    """HAProxy's spelling of a bind address ("*" for every interface, as Ray's)."""
    if host in ("0.0.0.0", "::", ""):
        return "*"
    if not _HOST_RE.match(host):
        raise ValueError(f"server.host must be an IP address or a host name, got {host!r}")
    return host


def haproxy_template(template: str, http_host: str) -> str:
    """Ray's HAProxy config template with the pages on loopback, the admin socket
    owner-only and the HTTP and gRPC frontends on ``http_host``."""
    missing = [
        line.strip()
        for line in (_ADMIN_SOCKET, _METRICS_BIND, _STATS_BIND, _HTTP_BIND, _GRPC_BIND)
        if template.count(line) != 1
    ]
    if missing:
        raise RuntimeError(
            "this Ray's HAProxy template does not have the lines textfleet rewrites to keep "
            f"HAProxy's pages on loopback: {missing}; use server.ingress: ray-proxy"
        )
    frontend = haproxy_frontend_host(http_host)
    return (
        template.replace(_ADMIN_SOCKET, _ADMIN_SOCKET.replace("mode 666", "mode 600"))
        .replace(_METRICS_BIND, f"    bind {LOOPBACK}:{{{{ config.metrics_port }}}}\n")
        .replace(_STATS_BIND, f"  bind {LOOPBACK}:{{{{ config.stats_port }}}}\n")
        .replace(_HTTP_BIND, f"    bind {frontend}:{{{{ config.frontend_port }}}}\n")
        .replace(_GRPC_BIND, f"    bind {frontend}:{{{{ config.grpc_frontend_port }}}} proto h2\n")
    )


def check_haproxy_template() -> None:
    """Raise before Ray starts if Ray's HAProxy template cannot be rewritten."""
    from ray.serve._private import haproxy_templates

    haproxy_template(haproxy_templates.HAPROXY_CONFIG_TEMPLATE, LOOPBACK)


_LOWEST_PORT = 20000
"""The lowest port ``free_loopback_port`` hands out: above the well-known services
and the range a ``ray start`` node gives its workers by default (10002-19999)."""
_REPLICA_PORTS_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
"""Where Ray Serve starts the replicas' own HTTP ports under HAProxy (30000 to 31000;
their gRPC ports, from 40000, are above the ephemeral range's start anyway)."""
_EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the range the kernel picks from for port 0 and outgoing
    connections (Linux's default when it cannot be read)."""
    try:
        return int(_EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_loopback_port() -> int:
    """A TCP port free on loopback now, below the kernel's ephemeral range.

    The port is released before its user binds it (HAProxy, seconds later, once
    Ray has started its manager). A port of the ephemeral range (the OS's pick
    for port 0) can be taken in between by any process that binds port 0 or
    connects out, and Ray's workers, starting meanwhile, do both: HAProxy then
    failed to start ("Address already in use") and the server with it. Below that
    range only a process that asks for the very number takes it; and below the
    replicas' own ports, which Ray hands out in order from 30000 as replicas start.
    Each port is handed out once per process."""
    high = min(_ephemeral_low(), int(os.environ.get(_REPLICA_PORTS_ENV, "30000")))
    if high - _LOWEST_PORT >= 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST_PORT, high)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((LOOPBACK, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


_PRIVATE_DIRS: list[str] = []


# Ray's settings for the ports of HAProxy's pages and of Serve's fallback proxy
# (HTTP, gRPC).
HAPROXY_PORT_ENV = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)


def haproxy_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Ray's HAProxy manager: its files in a new directory only this
    user can enter (removed by ``remove_haproxy_dirs``), and free loopback ports for
    HAProxy's pages and Serve's fallback proxy unless ``environ`` (this process's
    environment by default) names them."""
    environ = os.environ if environ is None else environ
    # Ray puts each node's files in <dir>/<56-character node id>/<file>, and HAProxy
    # takes socket paths of at most 97 characters: the directory's name is short.
    home = tempfile.mkdtemp(prefix="textfleet-", dir="/tmp")  # mode 0700
    _PRIVATE_DIRS.append(home)
    env = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(home, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(home, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": home,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(home, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(home, "metrics.sock"),
    }
    for key in HAPROXY_PORT_ENV:
        env[key] = environ.get(key) or str(free_loopback_port())
    return env


def remove_haproxy_dirs() -> None:
    """Remove the directories ``haproxy_env`` made (after Ray has stopped)."""
    while _PRIVATE_DIRS:
        shutil.rmtree(_PRIVATE_DIRS.pop(), ignore_errors=True)


class _DropSingleNodeHostWarning(logging.Filter):
    """Serve's controller warns that a loopback HTTP host cannot take HAProxy
    traffic from other nodes; a local server has no other nodes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "won't accept connections from HAProxy on other nodes" not in record.getMessage()


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for the workers of a local server."""
    from ray.serve._private import haproxy, replica

    haproxy.HAPROXY_CONFIG_TEMPLATE = haproxy_template(
        haproxy.HAPROXY_CONFIG_TEMPLATE, os.environ.get(HTTP_HOST_ENV, LOOPBACK)
    )

    bind_grpc = replica.add_port_to_grpc_server

    def bind_grpc_on_loopback(server, address: str) -> int:
        if address.startswith("[::]:"):
            address = LOOPBACK + address[len("[::]") :]
        return bind_grpc(server, address)

    replica.add_port_to_grpc_server = bind_grpc_on_loopback

    from ray.serve._private import default_impl

    add_grpc_address = default_impl.add_grpc_address

    def bind_grpc_ingress(server, address: str) -> None:
        if address.startswith("[::]:"):
            address = grpc_ingress_host() + address[len("[::]") :]
        add_grpc_address(server, address)

    default_impl.add_grpc_address = bind_grpc_ingress
    _grpc_port_sharing_as_asked()
    logging.getLogger("ray.serve").addFilter(_DropSingleNodeHostWarning())


def _grpc_port_sharing_as_asked() -> None:
    """Serve asks its gRPC servers for ``grpc.so_reuseport`` as the string "0" or "1";
    gRPC reads that option only as an integer and ignores a string, so port sharing
    stays on. A replica's direct gRPC port (allocated from 40000 up, per Ray) could
    then bind beside another server's replica on the same port, and the kernel would
    spread that port's connections over both. As an integer the option holds: a port
    in use fails to bind, and Serve allocates the next one."""
    from ray.serve._private import grpc_util

    init = grpc_util.gRPCGenericServer.__init__
    if getattr(init, "_textfleet", False):
        return

    def init_with_int_options(self, *args, extra_options=None, **kwargs):
        options = [
            (k, int(v)) if k == "grpc.so_reuseport" and isinstance(v, str) else (k, v)
            for k, v in (extra_options or [])
        ]
        init(self, *args, extra_options=options, **kwargs)

    init_with_int_options._textfleet = True
    grpc_util.gRPCGenericServer.__init__ = init_with_int_options


def grpc_ingress_host() -> str:
    """Where this worker's Serve gRPC ingress server binds: the server's host for Ray's
    proxy; loopback under HAProxy, whose own frontend is the public one."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        return LOOPBACK
    host = os.environ.get(HTTP_HOST_ENV) or LOOPBACK
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket of a server's process tree."""

    process: str
    pid: int
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.host.split("%")[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        return (mapped or ip).is_loopback

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listeners(pid: int, expect_port: int | None = None, timeout_s: float = 5.0) -> list[Listener]:
    """Every listening TCP socket of process ``pid`` and its descendants.

    With ``expect_port``, read again (for up to ``timeout_s``) until that port is
    among them: HAProxy reloads as replicas come and go, and a list read while
    one HAProxy hands its sockets to the next can miss them all.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = _listeners(pid)
        if expect_port is None or any(s.port == expect_port for s in found):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _listeners(pid: int) -> list[Listener]:
    import psutil

    root = psutil.Process(pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add(Listener(name, proc.pid, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:  # exited meanwhile, or not ours to read
            continue
    return sorted(found, key=lambda x: (x.port, x.host))
