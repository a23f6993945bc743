"""The one ``worker_process_setup_hook`` of a local server's Ray workers.

Ray takes a single hook, and three policies patch the same workers before any
replica or HAProxy starts: where things listen (``network``: loopback binds,
the HTTP frontend's host), how the front door behaves (``ingress_policy``:
timeouts, JSON errors, 503 while a route is not up) and where it sends the
shared routes (``haproxy_routes``: straight to the model's replica). They
rewrite different lines of Ray's HAProxy template, so they apply one after
the other.
"""

from textfleet.serve import haproxy_routes, ingress_policy, network

SETUP_HOOK = "textfleet.serve.worker_setup.setup_worker"


def setup_worker() -> None:
    network.setup_worker()
    ingress_policy.setup_worker()
    haproxy_routes.setup_worker()
