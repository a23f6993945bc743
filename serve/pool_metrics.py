"""Per-pool Prometheus metrics, exported through Ray's metrics agent like serve/metrics.py.

Ray adds the application, deployment and replica tags; we add ``model`` (the
pool's name), ``version`` (the pool entry's, as serve/metrics.py tags a model's
series, so the dashboard filters pools as it filters models) and, where it
matters, ``member``. Ray prefixes ``ray_`` and exports counters with
``_total``, e.g. ``ray_textfleet_pool_loads_total``.
Each member's requests are also in ``textfleet_requests`` under
``model="<pool>/<id>"``: a member answers through the same handlers as a
model of its own (serve/server.py).
"""

from __future__ import annotations

import collections

from ray.serve.metrics import Counter, Gauge, Histogram

from textfleet.serve.metrics import REPLICA_TAGS

# A member's load: reading and checking the directory, building the runtime's
# session, the warmup; seconds on a large model or a busy machine.
LOAD_BOUNDARIES_MS = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]


class PoolMetrics:
    """The metrics of one pool's replica."""

    def __init__(self, pool: str, version: str = "1"):
        self.loaded = Gauge(
            "textfleet_pool_loaded_members",
            description="Members of the pool loaded in the replica now.",
            tag_keys=REPLICA_TAGS,
        )
        self.loads = Counter(
            "textfleet_pool_loads",
            description="Member loads (cold starts) by outcome: ok or error.",
            tag_keys=(*REPLICA_TAGS, "outcome"),
        )
        self.evictions = Counter(
            "textfleet_pool_evictions",
            description="Members dropped from the replica, by reason: lru (to load another) "
            "or unload (the repository API).",
            tag_keys=(*REPLICA_TAGS, "reason"),
        )
        self.load_latency = Histogram(
            "textfleet_pool_load_latency_ms",
            description="Time to load a member (its cold start), in ms.",
            boundaries=LOAD_BOUNDARIES_MS,
            tag_keys=REPLICA_TAGS,
        )
        self.requests = Counter(
            "textfleet_pool_member_requests",
            description="Requests that reached a member, by member.",
            tag_keys=(*REPLICA_TAGS, "member"),
        )
        for m in (self.loaded, self.loads, self.evictions, self.load_latency, self.requests):
            m.set_default_tags({"model": pool, "version": version})
        self.loaded.set(0)
        self._unflushed: collections.Counter[str] = collections.Counter()

    def loaded_now(self, n: int) -> None:
        self.loaded.set(n)

    def load(self, ok: bool, took_s: float) -> None:
        self.loads.inc(1, {"outcome": "ok" if ok else "error"})
        if ok:
            self.load_latency.observe(took_s * 1000.0)

    def evicted(self, reason: str) -> None:
        self.evictions.inc(1, {"reason": reason})

    def request(self, member: str) -> None:
        """Count a request to ``member``; exported by ``flush`` (a Ray metric's tagged
        ``inc`` costs more than the rest of a small member's routing, on every request)."""
        self._unflushed[member] += 1

    def flush(self) -> None:
        """Export the requests counted since the last flush (the pool's gauge loop)."""
        pending, self._unflushed = self._unflushed, collections.Counter()
        for member, n in pending.items():
            self.requests.inc(n, {"member": member})
