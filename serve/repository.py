"""The V2 model repository extension (as Triton and MLServer have it), for pools.

The gateway answers these routes; the pools' replicas do the work (serve/pool.py):

- ``POST /v2/repository/index`` (body optional, ``{"ready": true}`` keeps only loaded
  members): one entry per member of every pool, Triton's fields (``name`` as
  ``<pool>/<id>``, ``version``, ``state`` ``READY`` or ``UNAVAILABLE``, ``reason``)
  plus ``pool``, ``member`` and ``loaded_on`` (replica ids);
- ``POST /v2/repository/models/<pool>/<id>/load``: warm the member: the call goes
  to the pool's handle with ``multiplexed_model_id=<id>``, so Ray picks a replica
  that holds it or else the one holding fewest members, which loads it (evicting
  its least recently used member if full). 200 once loaded; 404 for an id the
  pool refuses, 503 naming the member if it fails to load;
- ``POST /v2/repository/models/<pool>/<id>/unload``: drop the member from the
  replica the call reaches (Ray routes it to one holding the member, if any);
  200 with ``"unloaded": false`` when that replica did not hold it.

The semantics are per replica: with several replicas a member may be loaded on
more than one (each loads what it is asked for), an unload drops one copy, and
the index shows what the replica that answered holds (``loaded_on`` names it).
With one replica per pool, the index is the whole truth.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from textfleet.engine.errors import InputError
from textfleet.serve.forwarding import call
from textfleet.serve.protocols.body import read_request_body
from textfleet.serve.protocols.common import (
    MethodNotAllowed,
    NotFound,
    Reply,
    as_mapping,
    json_reply,
    loads,
    short_repr,
)

PREFIX = "/v2/repository/"

_MEMBER_ACTION = re.compile(r"^/v2/repository/models/([^/]+)/([^/]+)/(load|unload)$")
_INDEX_BODY_BYTES = 64 * 1024


async def route(models: Any, path: str, method: str, request: Request) -> Reply:
    """Answer a ``/v2/repository/...`` request; ``models``: the gateway's ModelDirectory."""
    if method != "POST":
        raise MethodNotAllowed(f"{path[:120]} takes POST, not {method[:16]}")
    if path == "/v2/repository/index":
        body = await read_request_body(request, _INDEX_BODY_BYTES)
        ready_only = _ready_flag(body)
        return json_reply(await index(models, ready_only))
    m = _MEMBER_ACTION.match(path)
    if m is None:
        raise NotFound(
            f"no route POST {path[:120]}; the repository API has /v2/repository/index and "
            "/v2/repository/models/<pool>/<id>/load (or /unload)"
        )
    pool, member, action = m.groups()
    if pool not in await models.pools():
        raise NotFound(
            f"no pool {short_repr(pool)}; the repository API loads and unloads pool members "
            f"(pools: {', '.join(await models.pools()) or 'none'})"
        )
    return await call(models, f"{pool}/{member}", f"repository_{action}", (), {}, None)


async def index(models: Any, ready_only: bool = False) -> list[dict[str, Any]]:
    """Every member of every pool, as the replica each pool's call reached sees it."""
    out = []
    for pool in await models.pools():
        view = await call(models, pool, "repository_index", (), {}, None)
        loaded = set(view["loaded"])
        for member in view["members"]:
            ready = member in loaded
            if ready_only and not ready:
                continue
            out.append(
                {
                    "name": f"{pool}/{member}",
                    "version": view.get("version", "1"),
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": "" if ready else "not loaded",
                    "pool": pool,
                    "member": member,
                    "loaded_on": [view["replica"]] if ready else [],
                }
            )
    return out


def _ready_flag(body: bytes) -> bool:
    if not body.strip():
        return False
    obj = as_mapping(loads(body), "body")
    ready = obj.get("ready", False)
    if not isinstance(ready, bool):
        raise InputError("ready", f"expected a boolean, got {short_repr(ready)}")
    return ready
