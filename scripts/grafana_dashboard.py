"""Writes the Grafana dashboard of a textfleet fleet, serve/dashboards/textfleet.json.

The panels are declared here, once, and the JSON is generated (as Ray generates
its own dashboards), so every query filters the same way and the layout is
computed; tests/test_dashboard.py checks that the committed JSON is this
script's output and that every metric it queries is exported by a running
server. Run it after changing a panel:

    .venv/bin/python scripts/grafana_dashboard.py

Two Prometheus scrape targets feed it: Ray's metrics agent
(``server.metrics_export_port``: the ``ray_textfleet_*`` metrics of the
replicas and routers, Ray Serve's ``ray_serve_*``) and, under the HAProxy
ingress, HAProxy's Prometheus page (``haproxy_*``; `textfleet serve` prints
its address).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "serve" / "dashboards" / "textfleet.json"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# Every series of a model's replicas carries ``model`` and ``version`` (serve/metrics.py),
# and so do a pool's (serve/pool_metrics.py). The model variable lists a pool once, by its
# name (MODEL_VALUE), while each member's own series say ``model="<pool>/<id>"``: picking
# a pool shows its members in every per-model panel and the pool's own series in its row.
MODEL_ONLY = 'model=~"($model)(/.+)?"'
MODEL = f'{MODEL_ONLY}, version=~"$version"'
MODEL_VALUE = "/^([^/]+)/"  # a model's name, or a member's pool
# A model's Ray Serve applications: the model's own, or ``<model>--v<version>`` per version.
APPLICATION = 'application=~"$model|$model--v.+"'
# HAProxy names a backend ``http-<application>``.
BACKEND = 'proxy=~"http-$model|http-$model--v.+"'
BY_MODEL = "model, version"
LEGEND = "{{model}} v{{version}}"

PANEL_WIDTH, PANEL_HEIGHT, ROW_WIDTH = 8, 8, 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = LEGEND


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    bounds: tuple[float, float] | None = None  # the y axis's min and max, when fixed


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def rate(metric: str, selector: str = MODEL) -> str:
    return f"rate({metric}{{{selector}}}[{RATE}])"


def per_model(metric: str, by: str = BY_MODEL, extra: str = "") -> str:
    """The per-second rate of a counter, summed over replicas."""
    return f"sum by ({by}) ({rate(metric, MODEL + extra)})"


def gauge(metric: str, by: str = BY_MODEL) -> str:
    """A gauge summed over replicas."""
    return f"sum by ({by}) ({metric}{{{MODEL}}})"


def quantile(q: float, histogram: str, by: str = BY_MODEL, selector: str = MODEL) -> str:
    """Quantile ``q`` of a histogram over the last rate interval, all replicas together."""
    return f"histogram_quantile({q}, sum by ({by}, le) ({rate(histogram + '_bucket', selector)}))"


def p50_p99(histogram: str, by: str = BY_MODEL, legend: str = LEGEND) -> tuple[Query, ...]:
    return tuple(
        Query(quantile(q, histogram, by), f"{legend} p{round(q * 100)}") for q in (0.5, 0.99)
    )


def ratio(numerator: str, denominator: str, by: str = BY_MODEL) -> str:
    return f"{per_model(numerator, by)} / {per_model(denominator, by)}"


TRAFFIC = Row(
    "Traffic (per model and version, as the replicas answered)",
    (
        Panel(
            "Requests/s",
            "Requests answered by the model's replicas, every protocol and status.",
            "reqps",
            (Query(per_model("ray_textfleet_requests_total")),),
        ),
        Panel(
            "Texts/s",
            "Texts (sequences, or pairs) received.",
            "short",
            (Query(per_model("ray_textfleet_texts_total")),),
        ),
        Panel(
            "Latency p50 / p99",
            "From a request reaching the replica to its reply (HTTP and handle calls).",
            "ms",
            p50_p99("ray_textfleet_request_latency_ms"),
        ),
        Panel(
            "Errors/s",
            "Failed requests: client (4xx: bad input, too large) or server (5xx).",
            "reqps",
            (
                Query(
                    per_model("ray_textfleet_errors_total", f"{BY_MODEL}, kind"),
                    f"{LEGEND} {{{{kind}}}}",
                ),
            ),
        ),
        Panel(
            "503s/s",
            "Requests the replicas answered 503 (the engine's queue was full, the request "
            "could not finish before its deadline, the engine was unavailable), and every "
            "503 the HTTP front door sent per application, its own included (no replica up, "
            "Ray's queue full).",
            "reqps",
            (
                Query(per_model("ray_textfleet_rejections_total")),
                Query(
                    "sum by (application) (rate(ray_serve_num_http_requests_total"
                    f'{{{APPLICATION}, status_code="503"}}[{RATE}]))',
                    "{{application}} at the front door",
                ),
            ),
        ),
        Panel(
            "Error ratio",
            "Failed requests over all requests.",
            "percentunit",
            (Query(ratio("ray_textfleet_errors_total", "ray_textfleet_requests_total")),),
            bounds=(0, 1),
        ),
    ),
)

ENGINE = Row(
    "Batching and queue (the engine's scheduler)",
    (
        Panel(
            "Batch size",
            "Sequences per batch handed to the backend: p50, p99 and the mean "
            "(sequences / batches).",
            "short",
            (
                *p50_p99("ray_textfleet_engine_batch_size"),
                Query(
                    ratio(
                        "ray_textfleet_engine_sequences_total", "ray_textfleet_engine_batches_total"
                    ),
                    f"{LEGEND} mean",
                ),
            ),
        ),
        Panel(
            "Padding efficiency",
            "Tokens computed without padding over tokens computed with it (rows x longest "
            "row); 1 means no compute spent on padding.",
            "percentunit",
            (
                Query(
                    ratio(
                        "ray_textfleet_engine_real_tokens_total",
                        "ray_textfleet_engine_padded_tokens_total",
                    )
                ),
            ),
            bounds=(0, 1),
        ),
        Panel(
            "Queue depth",
            "Sequences waiting for a batch, and requests admitted but not answered, "
            "summed over replicas.",
            "short",
            (
                Query(gauge("ray_textfleet_engine_queue_sequences"), f"{LEGEND} queued sequences"),
                Query(gauge("ray_textfleet_engine_live_requests"), f"{LEGEND} live requests"),
            ),
        ),
        Panel(
            "Queue wait p50 / p99",
            "Per sequence, from submission to its batch.",
            "s",
            p50_p99("ray_textfleet_engine_queue_wait_s"),
        ),
        Panel(
            "Compute per batch p50 / p99",
            "Seconds the backend and the task head spent on one batch.",
            "s",
            p50_p99("ray_textfleet_engine_compute_time_s"),
        ),
        Panel(
            "Refused and timed out /s",
            "Requests the engine refused (its queue full, or one larger than the whole "
            "queue) and requests whose caller's deadline passed in the queue. A batch "
            "whose backend raised shows in Errors/s (server).",
            "short",
            tuple(
                Query(per_model(f"ray_textfleet_engine_{name}_total"), f"{LEGEND} {name}")
                for name in ("rejected", "timed_out")
            ),
        ),
    ),
)

BY_CLASS = f"{BY_MODEL}, priority"
CLASS_LEGEND = f"{LEGEND} class {{{{priority}}}}"

PRIORITY = Row(
    "Request priority (per class, 0 the most urgent: each request's time in the engine)",
    (
        Panel(
            "Engine time by priority p50 / p99",
            "Per priority class, the time a computed request spent in the engine (queued, "
            "then computed): urgent traffic's latency apart from the bulk's.",
            "ms",
            p50_p99("ray_textfleet_priority_latency_ms", BY_CLASS, CLASS_LEGEND),
        ),
        Panel(
            "Shed/s by priority",
            "Requests refused on arrival, per class: shed_deadline (it would wait longer "
            "than its class may under its deadline), shed_queue (its class's share of the "
            "queue was full). Less urgent classes are shed first (batching."
            "least_urgent_queue_share).",
            "reqps",
            (
                Query(
                    per_model(
                        "ray_textfleet_priority_requests_total",
                        f"{BY_CLASS}, outcome",
                        ', outcome=~"shed_.+"',
                    ),
                    f"{CLASS_LEGEND} {{{{outcome}}}}",
                ),
            ),
        ),
        Panel(
            "Requests/s by priority and outcome",
            "Every request by class and outcome: ok, shed_deadline, shed_queue, timeout, "
            "cancelled, error.",
            "reqps",
            (
                Query(
                    per_model("ray_textfleet_priority_requests_total", f"{BY_CLASS}, outcome"),
                    f"{CLASS_LEGEND} {{{{outcome}}}}",
                ),
            ),
        ),
    ),
)

VERSIONS = Row(
    "Versions and shadow (models with versions)",
    (
        Panel(
            "Requests/s routed to each version",
            "What a versioned model's router sent to each version (weights, sticky "
            "sessions, explicit version routes).",
            "reqps",
            (Query(per_model("ray_textfleet_version_requests_total")),),
        ),
        Panel(
            "Shadow mirrors/s by outcome",
            "Requests copied to the shadow version: ok (compared), error, dropped "
            "(past max_in_flight).",
            "reqps",
            (
                Query(
                    per_model("ray_textfleet_shadow_requests_total", f"{BY_MODEL}, outcome"),
                    f"{LEGEND} {{{{outcome}}}}",
                ),
            ),
        ),
        Panel(
            "Shadow agreement (mean per measure)",
            "The shadow's per-row agreement with the primary's answer: cosine, "
            "top1_agreement, span_f1, rank_correlation (1 is equal), score_diff.",
            "short",
            (
                Query(
                    ratio(
                        "ray_textfleet_shadow_agreement_sum",
                        "ray_textfleet_shadow_agreement_count",
                        f"{BY_MODEL}, measure",
                    ),
                    f"{LEGEND} {{{{measure}}}}",
                ),
            ),
        ),
        Panel(
            "Shadow latency p50 / p99",
            "Time the shadow took to answer a mirrored request.",
            "ms",
            p50_p99("ray_textfleet_shadow_latency_ms"),
        ),
    ),
)

SERVE = Row(
    "Ray Serve (per application: a model, or one version of it)",
    (
        Panel(
            "Requests waiting for a replica",
            "Requests queued in Ray Serve's routers, not yet assigned to a replica.",
            "short",
            (
                Query(
                    f"sum by (application) (ray_serve_deployment_queued_queries{{{APPLICATION}}})",
                    "{{application}}",
                ),
            ),
        ),
        Panel(
            "Requests in replicas",
            "Requests each application's replicas are processing now.",
            "short",
            (
                Query(
                    f"sum by (application) (ray_serve_replica_processing_queries{{{APPLICATION}}})",
                    "{{application}}",
                ),
            ),
        ),
        Panel(
            "HTTP responses/s by status (front door)",
            "Every HTTP reply of the front door (HAProxy or Ray's proxy) per application "
            "and status code (the shared routes count under the model they reach under "
            "HAProxy, under the gateway under Ray's proxy).",
            "reqps",
            (
                Query(
                    "sum by (application, status_code) "
                    f"(rate(ray_serve_num_http_requests_total{{{APPLICATION}}}[{RATE}]))",
                    "{{application}} {{status_code}}",
                ),
            ),
        ),
        Panel(
            "Healthy replicas",
            "Replicas Ray Serve counts as healthy.",
            "short",
            (
                Query(
                    f"sum by (application) (ray_serve_deployment_replica_healthy{{{APPLICATION}}})",
                    "{{application}}",
                ),
            ),
        ),
    ),
)

FRONT_DOOR = Row(
    "HAProxy front door (second scrape target: HAProxy's Prometheus page)",
    (
        Panel(
            "Responses/s by status class",
            "Replies HAProxy sent for each application's backend, 503s of its own "
            "(no replica up) included.",
            "reqps",
            (
                Query(
                    "sum by (proxy, code) "
                    f"(rate(haproxy_backend_http_responses_total{{{BACKEND}}}[{RATE}]))",
                    "{{proxy}} {{code}}",
                ),
            ),
        ),
        Panel(
            "Requests queued in HAProxy",
            "Requests waiting in HAProxy for a free replica connection.",
            "short",
            (Query(f"sum by (proxy) (haproxy_backend_current_queue{{{BACKEND}}})", "{{proxy}}"),),
        ),
        Panel(
            "Replicas up in HAProxy",
            "Servers (replicas) HAProxy sees as up in each backend.",
            "short",
            (Query(f"sum by (proxy) (haproxy_backend_active_servers{{{BACKEND}}})", "{{proxy}}"),),
        ),
    ),
)

POOLS = Row(
    "Pools (many models per replica; each member's own traffic is in the rows above "
    "as <pool>/<id>)",
    (
        Panel(
            "Members loaded",
            "Members the pool's replicas hold now, summed over replicas (each holds at "
            "most pool.max_models_per_replica).",
            "short",
            (Query(gauge("ray_textfleet_pool_loaded_members")),),
        ),
        Panel(
            "Member loads/s by outcome",
            "Cold starts: a call or a repository load for a member its replica did not "
            "hold. error: the member's directory failed to load (503 naming it).",
            "ops",
            (
                Query(
                    per_model("ray_textfleet_pool_loads_total", f"{BY_MODEL}, outcome"),
                    f"{LEGEND} {{{{outcome}}}}",
                ),
            ),
        ),
        Panel(
            "Evictions/s by reason",
            "Members dropped from a replica: lru (the least recently used, to load "
            "another), unload (the repository API). Evictions about as frequent as "
            "loads: the members in use outnumber what the replicas hold (raise "
            "max_models_per_replica or num_replicas).",
            "ops",
            (
                Query(
                    per_model("ray_textfleet_pool_evictions_total", f"{BY_MODEL}, reason"),
                    f"{LEGEND} {{{{reason}}}}",
                ),
            ),
        ),
        Panel(
            "Cold-load latency p50 / p99",
            "Time to load a member: what a call that finds its member unloaded waits "
            "before its own work.",
            "ms",
            p50_p99("ray_textfleet_pool_load_latency_ms"),
        ),
        Panel(
            "Requests/s per member (busiest 20)",
            "Requests that reached each member. One that stays on top is a candidate "
            "for an application of its own (README, pools: promoting a hot member).",
            "reqps",
            (
                Query(
                    "topk(20, "
                    + per_model("ray_textfleet_pool_member_requests_total", f"{BY_MODEL}, member")
                    + ")",
                    "{{model}}/{{member}} v{{version}}",
                ),
            ),
        ),
    ),
)

ROWS = (TRAFFIC, ENGINE, PRIORITY, VERSIONS, POOLS, SERVE, FRONT_DOOR)


def variables() -> list[dict]:
    """The data source, then the model and version the panels show (several, or all)."""

    def query_variable(name: str, label: str, query: str, regex: str = "") -> dict:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": name},
            "regex": regex,
            "refresh": 2,  # on a time range change: new models appear
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }

    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "refresh": 1,
            "regex": "",
        },
        query_variable(
            "model", "Model", "label_values(ray_textfleet_requests_total, model)", MODEL_VALUE
        ),
        query_variable(
            "version",
            "Version",
            f"label_values(ray_textfleet_requests_total{{{MODEL_ONLY}}}, version)",
        ),
    ]


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": panel.unit}
    if panel.bounds is not None:
        defaults["min"], defaults["max"] = panel.bounds
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": q.expr,
                "legendFormat": q.legend,
            }
            for i, q in enumerate(panel.queries)
        ],
    }


def dashboard() -> dict:
    panels: list[dict] = []
    y = 0
    for row in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": ROW_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        for i, panel in enumerate(row.panels):
            x = (i * PANEL_WIDTH) % ROW_WIDTH
            if i and x == 0:
                y += PANEL_HEIGHT
            panels.append(panel_json(panel, len(panels) + 1, x, y))
        y += PANEL_HEIGHT
    return {
        "title": "textfleet",
        "uid": "textfleet",
        "description": "Per model and version: traffic, latency, errors, batching, queues, "
        "shadow agreement, pool loads and evictions; Ray Serve and HAProxy per application.",
        "tags": ["textfleet", "ray-serve"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "annotations": {"list": []},
        "templating": {"list": variables()},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
