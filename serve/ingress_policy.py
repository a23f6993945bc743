"""How the HTTP front door treats slow clients, missing routes and dead replicas.

Ray Serve generates the front door's configuration itself: HAProxy's config
from a template in ``ray.serve._private.haproxy_templates`` (HAProxy mode),
or its Python proxy's responses in ``ray.serve._private`` (ray-proxy mode).
Their defaults are made for other workloads: HAProxy waits an hour for a
client, has no limit on sending request headers and turns its own 502, 503
and 504 into a plain-text 500; the proxy answers a path no application serves
yet with 404, which clients and load balancers take as permanent, and a
replica that died under a request with a 500.

Every Ray worker of a server started by ``start_ray`` (serve/deploy.py) runs
``setup_worker`` first (Ray's ``worker_process_setup_hook``), which puts our
policy into the process that builds the front door:

- HAProxy (``haproxy_template``): request headers within
  ``HEADER_TIMEOUT_S`` (else 408), idle keep-alive connections closed after
  ``KEEP_ALIVE_TIMEOUT_S``, client inactivity cut after ``CLIENT_TIMEOUT_S``
  (environment, ``HAPROXY_ENV``), a replica given the longest deadline plus a
  margin (``timeout server``); its own errors answered as JSON: a replica
  gone (502) or none up (503) is 503 with Retry-After, a replica too slow
  504; and a path no route serves yet (the gateway at ``/`` is not up: the
  server is starting) 503 with Retry-After instead of 404. A request whose
  replica died before answering is replayed once on another replica
  (``retry-on empty-response``): inference is idempotent. One sent on a
  connection kept open to a replica killed a moment ago can still be reset:
  the dead process's kernel resets the connection, HAProxy (2.8, Ray's build)
  did not replay that in our runs, and on a keep-alive connection it closes
  the client's without an answer. ``option http-server-close`` (a new
  connection to the replica per request, refused at once by a dead one, and
  replayed; ``server.replica_connections: per_request``) avoids that but costs
  every request: +0.3-0.7 ms p50 on a route that does no work, +0.7-1.7 ms on
  a one-text classification at one client and 8-17% of a classifier's
  throughput at 64 clients, measured on 2 cores in alternating rounds. The
  reset is rare: one in 67 kills of a replica serving 8 clients with
  connections kept open, none in 40 kills with a connection per request
  (which also saw no 503: a dead replica refuses the connection and the
  request goes to the live one).
- Ray's proxy (``patch_ray_proxy``): the same 503 for a path no route serves
  yet and for a replica that died or cannot be reached.

Ray's template is checked line by line (``haproxy_template``): a Ray release
that changes a line we rewrite fails at start instead of silently dropping
the policy.
"""

from __future__ import annotations

import json
import os

from textfleet.serve.config import MAX_REQUEST_TIMEOUT_S

HEADER_TIMEOUT_S = 10
"""A client must send its whole request head within this many seconds."""

KEEP_ALIVE_TIMEOUT_S = 15
"""An idle keep-alive connection is closed after this many seconds."""

CLIENT_TIMEOUT_S = 60
"""A client silent this long while sending its body or reading the reply is cut off."""

SERVER_TIMEOUT_S = int(MAX_REQUEST_TIMEOUT_S) + 10
"""A replica answers by every request's deadline (at most MAX_REQUEST_TIMEOUT_S) itself;
HAProxy gives up on it (504) only a little after that."""

RETRY_AFTER_S = 1
"""Retry-After of a 503 for a replica that is starting, restarting or gone."""


# Read by Ray's HAProxy manager when it starts (a value already set wins).
HAPROXY_ENV: dict[str, str] = {
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(CLIENT_TIMEOUT_S),
    "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(SERVER_TIMEOUT_S),
    # Ray's default retries only a connection that failed; a replica that died
    # with the request sent is retried on another one too (inference is
    # idempotent). A request larger than HAProxy's buffer is never replayed.
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
    # A replica killed a moment ago still looks up to HAProxy until three
    # connections to it fail (Ray's `observe layer4 error-limit 3`): with
    # HAProxy's default of 3 retries a request could spend them all on it and
    # end without an answer. Past that, retries go to a live replica or to Ray's
    # proxy (the backup server), which answers 503 while none is up.
    "RAY_SERVE_HAPROXY_RETRIES": "6",
}

REPLICA_CONNECTIONS_ENV = "TEXTFLEET_REPLICA_CONNECTIONS"
"""``server.replica_connections`` of the server that starts Ray (serve/deploy.py),
read where HAProxy's config is written; ``per_request`` closes each connection to a
replica after its response."""

CLUSTER_SETUP_HOOK = "textfleet.serve.ingress_policy.setup_worker"
"""The hook for a cluster's workers: this policy only. serve/network.py's loopback
binds are for one machine: on a cluster, replicas talk across nodes."""

STARTING_MESSAGE = "the server is starting: no route serves this path yet; retry shortly"
REPLICA_GONE_MESSAGE = "the model's replica is unavailable (starting or restarting); retry shortly"
NO_REPLICA_MESSAGE = "no replica of this model is up (starting or restarting); retry shortly"
TIMEOUT_MESSAGE = "the model's replica did not answer in time"
REQUEST_TIMEOUT_MESSAGE = f"the request was not received within {HEADER_TIMEOUT_S} s"

# Lines of Ray's template (ray/serve/_private/haproxy_templates.py) and ours.
_ERRORFILES = (
    "    # Normalize 502/503/504 to 500 per Serve's default behavior. 503\n"
    '    # covers HAProxy\'s own "all retries exhausted / no server" response.\n'
    "    {%- if config.error_file_path %}\n"
    "    errorfile 502 {{ config.error_file_path }}\n"
    "    errorfile 503 {{ config.error_file_path }}\n"
    "    errorfile 504 {{ config.error_file_path }}\n"
    "    {%- endif %}\n"
)
_HTTP_REQUEST_TIMEOUT = (
    "{% if config.timeout_http_request_s is not none %}timeout http-request "
    "{{ config.timeout_http_request_s }}s{% endif %}"
)
_KEEP_ALIVE_TIMEOUT = (
    "{% if config.timeout_http_keep_alive_s is not none %}timeout http-keep-alive "
    "{{ config.timeout_http_keep_alive_s }}s{% endif %}"
)
_NOT_FOUND = (
    "backend default_backend\n"
    "    http-request return status 404 content-type text/plain lf-string "
    "\"Path '%[path]' not found. Ping http://.../-/routes for available routes.\"\n"
)


def _json_string(message: str) -> str:
    """An HAProxy double-quoted string holding ``{"error": message}``."""
    body = json.dumps({"error": message})
    return '"' + body.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _http_error(status: int, message: str, retry_after: bool) -> str:
    hdr = f" hdr Retry-After {RETRY_AFTER_S}" if retry_after else ""
    return (
        f"    http-error status {status} content-type application/json "
        f"string {_json_string(message)}{hdr}\n"
    )


def haproxy_errors() -> str:
    """HAProxy's own error replies as JSON (the defaults section)."""
    return (
        "    # textfleet: HAProxy's own errors as JSON (502 becomes a 503 in the frontend).\n"
        + _http_error(408, REQUEST_TIMEOUT_MESSAGE, retry_after=False)
        + _http_error(502, REPLICA_GONE_MESSAGE, retry_after=True)
        + _http_error(503, NO_REPLICA_MESSAGE, retry_after=True)
        + _http_error(504, TIMEOUT_MESSAGE, retry_after=False)
    )


# http-error keeps the status. A replica that died under a request is no bad
# gateway to the client but a model restarting: 503. Our replicas never send 502.
# HAProxy keeps the client's connection open after such a reply and then
# drops the next request sent on it without an answer: the reply says
# "Connection: close" so the client opens a new one. (http-after-response is
# not allowed in an anonymous defaults section.)
_FRONTEND_ANCHOR = "    # Routes endpoint\n"

# HAProxy replays a request (``retry-on``) only from its own buffer: a spliced
# body bypasses it, and a request forwarded before its body arrived cannot be
# replayed; a keep-alive client then sees its connection closed without an
# answer. So bodies are not spliced, and a small request (one that fits
# HAProxy's 16 KB buffer) is held until its body is whole before it goes to a
# replica. A larger one is forwarded at once, so its replica can refuse it
# (413) on its Content-Length before the body is sent; it is never replayed.
_SPLICE_REQUEST = "    option splice-request\n"
BUFFERED_BODY_BYTES = 12 * 1024
_BUFFER_SMALL_BODIES = (
    f"    http-request wait-for-body time {HEADER_TIMEOUT_S}s if METH_POST "
    f"{{ req.hdr_val(content-length) le {BUFFERED_BODY_BYTES} }}\n"
)
_FRONTEND_RULES = (
    "    http-after-response set-header Connection close if { status 502 }\n"
    "    http-after-response set-status 503 if { status 502 }\n"
)


def _replica_connections() -> str:
    """The defaults section's line for ``server.replica_connections``: per request,
    HAProxy closes its connection to a replica after each response (the client's
    stays open), so no request is ever sent on a connection a dead replica left."""
    if os.environ.get(REPLICA_CONNECTIONS_ENV) != "per_request":
        return ""
    return "    option http-server-close\n"


def haproxy_template(template: str) -> str:
    """Ray's HAProxy config template with textfleet's timeouts and error replies."""
    lines = (
        _ERRORFILES,
        _HTTP_REQUEST_TIMEOUT,
        _KEEP_ALIVE_TIMEOUT,
        _NOT_FOUND,
        _FRONTEND_ANCHOR,
        _SPLICE_REQUEST,
    )
    missing = [line.strip().splitlines()[0] for line in lines if template.count(line) != 1]
    if missing:
        raise RuntimeError(
            "this Ray's HAProxy template does not have the lines textfleet rewrites for its "
            f"timeouts and error replies: {missing}; use server.ingress: ray-proxy"
        )
    not_found = (
        "backend default_backend\n"
        f"    http-request return status 503 content-type application/json "
        f"string {_json_string(STARTING_MESSAGE)} hdr Retry-After {RETRY_AFTER_S}\n"
    )
    defaults = haproxy_errors() + _replica_connections()
    return (
        template.replace(_ERRORFILES, defaults)
        .replace(_HTTP_REQUEST_TIMEOUT, f"timeout http-request {HEADER_TIMEOUT_S}s")
        .replace(_KEEP_ALIVE_TIMEOUT, f"timeout http-keep-alive {KEEP_ALIVE_TIMEOUT_S}s")
        .replace(_NOT_FOUND, not_found)
        .replace(_FRONTEND_ANCHOR, _FRONTEND_RULES + _BUFFER_SMALL_BODIES + _FRONTEND_ANCHOR)
        .replace(_SPLICE_REQUEST, "")
    )


def check_haproxy_template() -> None:
    """Raise before Ray starts if Ray's HAProxy template cannot be rewritten."""
    from ray.serve._private import haproxy_templates

    haproxy_template(haproxy_templates.HAPROXY_CONFIG_TEMPLATE)


def patch_ray_proxy() -> None:
    """Ray's Python proxy: 503 + Retry-After for a path no route serves yet and for a
    replica that died or cannot be reached (Ray answers 404 and 500); 504 when the
    proxy's own deadline passes (Ray answers 408, which clients take as their fault)."""
    from ray.exceptions import RayActorError
    from ray.serve._private import http_util, proxy
    from ray.serve._private.proxy_request_response import ResponseStatus

    status_of = http_util.get_http_response_status

    def response_status(exc: BaseException, request_timeout_s, request_id: str):
        if isinstance(exc, TimeoutError):  # http_options.request_timeout_s; Ray says 408
            return ResponseStatus(code=504, is_error=True, message=TIMEOUT_MESSAGE)
        if isinstance(exc, RayActorError):
            return ResponseStatus(
                code=503,
                is_error=True,
                message=REPLICA_GONE_MESSAGE,
                headers=http_util.retry_after_headers(RETRY_AFTER_S),
            )
        return status_of(exc, request_timeout_s, request_id)

    async def starting_response(self, proxy_request):
        headers = http_util.retry_after_headers(RETRY_AFTER_S)
        for message in http_util.convert_object_to_asgi_messages(
            {"error": STARTING_MESSAGE}, status_code=503, extra_headers=headers
        ):
            yield message
        yield ResponseStatus(code=503, is_error=True)

    replies_on_exception = http_util.send_http_response_on_exception

    def reply_on_exception(status, response_started: bool):
        # Ray replies only to 408, 429 and 503 here; any other code leaves the
        # client with uvicorn's bare 500.
        if status.code == 504 and not response_started:
            return http_util.convert_object_to_asgi_messages(
                status.message, status_code=504, extra_headers=status.headers
            )
        return replies_on_exception(status, response_started)

    proxy.get_http_response_status = response_status  # imported by name there
    proxy.send_http_response_on_exception = reply_on_exception
    proxy.HTTPProxy.not_found_response = starting_response


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: of a local server's workers (through
    serve/worker_setup.py), and alone on a cluster (``CLUSTER_SETUP_HOOK``)."""
    from ray.serve._private import haproxy

    haproxy.HAPROXY_CONFIG_TEMPLATE = haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE)
    patch_ray_proxy()
