"""The shared routes straight to the model's replica under HAProxy: no more hops than V2.

``POST /v1/embeddings`` and ``POST /v1/rerank`` name the model in the body,
KServe V1 ``POST /v1/models/<name>:predict`` in the path; none of them lives
under a model's route prefix, so Ray's routing sends them to the gateway,
which forwards them through a Ray handle: a hop and a Ray call more than V2.
The model's application serves the same protocols below its own prefix
(serve/model_routes.py), so HAProxy's frontend rewrites the path onto it
before Ray's routing rules run, and the request then takes V2's way, straight
to the replica's own HTTP server::

    POST /v1/embeddings  {"model": "minilm", ...}  ->  /v2/models/minilm/v1/embeddings
    POST /v1/rerank      {"model": "ce", ...}      ->  /v2/models/ce/v1/rerank
    POST /v1/models/minilm:predict                 ->  /v2/models/minilm/v1/models/minilm:predict

A request is rewritten only when all of this holds; any other goes to the
gateway unchanged, which answers as before (404 naming the served models, 503
for a model that is starting or failed, 4xx for a bad body):

- the method is POST;
- body routes: the body has a ``Content-Length`` (not chunked) and all of
  it is in HAProxy's buffer when the rules run, so HAProxy reads the whole
  body and never a prefix of it; its top-level ``model``
  (``json_query('$.model')``) is what is routed on. The front door's policy
  holds a body of up to ``BUFFERED_BODY_BYTES`` (12 KiB) until it is whole
  (serve/ingress_policy.py); a larger one is forwarded as it arrives, so it
  takes the gateway's path (where the size limits apply as before) unless it
  happened to be whole already;
- the name matches models.yaml's name pattern (``MODEL_NAME_PATTERN``: no
  ``/``, no ``%``, no leading ``.``), checked after JSON unescaping;
- ``/v2/models/<name>`` is, character for character, the route prefix of a
  textfleet model application (ingress ``ModelServer``, application named
  ``<name>``) that has a running replica in HAProxy's current config. The
  client's text reaches the path only as one of those prefixes.

The replica then checks the API key, the body's type and its model's size
limit as on every route, and parses the body itself: if a body names
``model`` twice, HAProxy routes on the first and the replica reads the last,
and a mismatch is a 400 (``ModelServer._check_model``).

Under ``ingress: ray-proxy`` nothing is rewritten: the shared routes go
through the gateway, and the paths below each model's prefix are the fast way.
"""

from __future__ import annotations

from textfleet.serve.config import DEPLOYMENT_NAME, MODEL_NAME_PATTERN

# Ray's template line before which our rules go: after its health rules, before
# its routing ACLs, its metrics variables and use_backend, which thus all see
# the rewritten path. ingress_policy inserts its lines (the wait for the body
# among them) at the same place; worker_setup applies it first.
_ANCHOR = "    # Routes endpoint\n"

# `tf_` names are ours. Rules run in order; ACLs are evaluated where used, and a
# condition's terms left to right, so a body is read only once it is whole (an
# unset tf_body_len fails tf_whole_body).
_RULES = (
    "    # textfleet: the shared routes straight to the model's replica "
    "(textfleet/serve/haproxy_routes.py)\n"
    "    acl tf_body_route path /v1/embeddings /v1/rerank\n"
    "    acl tf_v1_predict path_reg ^/v1/models/[^/:]+:predict$\n"
    "    acl tf_one_length req.hdr_cnt(content-length) eq 1\n"
    "    acl tf_not_chunked req.hdr_cnt(transfer-encoding) eq 0\n"
    "    http-request set-var(txn.tf_body_len) req.body_len"
    " if METH_POST tf_body_route tf_one_length tf_not_chunked\n"
    "    acl tf_whole_body req.body_size,sub(txn.tf_body_len) eq 0\n"
    "    http-request set-var(txn.tf_model) req.body,json_query('$.model')"
    " if METH_POST tf_body_route tf_one_length tf_not_chunked tf_whole_body\n"
    "    http-request set-var(txn.tf_model) path,field(4,/),field(1,:)"
    " if METH_POST tf_v1_predict\n"
    "    acl tf_name_ok var(txn.tf_model) -m reg @MODEL_NAME_PATTERN@\n"
    "    http-request set-var-fmt(txn.tf_prefix) /v2/models/%[var(txn.tf_model)] if tf_name_ok\n"
    "    acl tf_served always_false\n"
    "{%- for backend in backends %}\n"
    "{%- if backend.servers and backend.ingress_deployment_name == '@DEPLOYMENT_NAME@'"
    " and backend.path_prefix == '/v2/models/' ~ backend.app_name %}\n"
    "    acl tf_served var(txn.tf_prefix) -m str {{ backend.path_prefix }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "    http-request set-path %[var(txn.tf_prefix)]%[path] if tf_name_ok tf_served\n"
)


def frontend_rules() -> str:
    """The frontend lines (Jinja, in Ray's template language) that do the rewrite."""
    return _RULES.replace("@MODEL_NAME_PATTERN@", MODEL_NAME_PATTERN).replace(
        "@DEPLOYMENT_NAME@", DEPLOYMENT_NAME
    )


def haproxy_template(template: str) -> str:
    """Ray's HAProxy config template with the shared routes rewritten onto the models'."""
    if template.count(_ANCHOR) != 1:
        raise RuntimeError(
            "this Ray's HAProxy template does not have the line textfleet puts its routing "
            f"before: {_ANCHOR.strip()!r}; use server.ingress: ray-proxy"
        )
    return template.replace(_ANCHOR, frontend_rules() + _ANCHOR)


def check_haproxy_template() -> None:
    """Raise before Ray starts if Ray's HAProxy template cannot be rewritten."""
    from ray.serve._private import haproxy_templates

    haproxy_template(haproxy_templates.HAPROXY_CONFIG_TEMPLATE)


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for the workers of a local server."""
    from ray.serve._private import haproxy

    haproxy.HAPROXY_CONFIG_TEMPLATE = haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE)
