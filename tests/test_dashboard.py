"""The Grafana dashboard (serve/dashboards/textfleet.json) against what a server exports.

Without Ray: the committed JSON is scripts/grafana_dashboard.py's output, it is a
well-formed dashboard (every panel has the data source and a query that parses
as PromQL), and it ships in the wheel. With a real Ray Serve: a plain model and a
versioned model with a shadow answer a few requests (a bad one, an oversized one
and a refused one among them), then every metric name the dashboard's queries and
variables read is found in the Prometheus text of Ray's metrics agent (and of
HAProxy's page under the HAProxy ingress), with the labels the queries filter on.
A pool of two members that holds one at a time loads, evicts and answers too, so
the pool panels' series are checked the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from serving import v2_body

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "serve" / "dashboards" / "textfleet.json"
GENERATOR = REPO / "scripts" / "grafana_dashboard.py"

# Grafana's variables, replaced by values PromQL accepts before a query is parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
# What every query of our metrics filters on: the model variable (a model, or a pool and
# each of its members "<pool>/<id>") and the version variable.
MODEL_FILTER = 'model=~"($model)(/.+)?"'
VERSION_FILTER = 'version=~"$version"'


def load() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def graphs(dashboard: dict) -> list[dict]:
    """The panels that draw something (rows only group them)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: the panels' targets and the variables' ``label_values``."""
    exprs = [t["expr"] for p in graphs(dashboard) for t in p["targets"]]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            inner = var["query"]["query"]
            assert inner.startswith("label_values(") and inner.endswith(")"), inner
            exprs.append(inner[len("label_values(") : -1].rsplit(",", 1)[0])
    return exprs


def parse(expr: str):
    import promql_parser

    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return promql_parser.parse(expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, read from its parsed syntax tree."""
    import promql_parser

    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)

    promql_parser.walk(parse(expr), visit)
    return names


def dashboard_metrics() -> set[str]:
    return {name for expr in queries(load()) for name in metric_names(expr)}


# ---------------------------------------------------------------- the JSON alone


def test_the_committed_json_is_the_generators_output():
    generator = runpy.run_path(str(GENERATOR))
    assert DASHBOARD.read_text(encoding="utf-8") == generator["render"](), (
        "serve/dashboards/textfleet.json is stale: run scripts/grafana_dashboard.py"
    )


def test_every_panel_has_the_data_source_and_a_query_that_parses():
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"model", "version"} <= set(variables)
    # A pool is listed once, by its name, though only its members' series name it.
    value = re.compile(variables["model"]["regex"].strip("/"))
    assert [value.match(m)[1] for m in ("plain", "pool/member")] == ["plain", "pool"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in graphs(dashboard):
        where = f"panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
            assert target["expr"].strip() and target["refId"], where
            assert metric_names(target["expr"]), where
            if "ray_textfleet_" in target["expr"]:  # per model and version
                assert MODEL_FILTER in target["expr"], where
                assert VERSION_FILTER in target["expr"], where
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
    for expr in queries(dashboard):
        parse(expr)  # raises on a syntax error


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in load()["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_metric_names_come_from_the_syntax_tree():
    expr = (
        'histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{model=~"$model"}'
        "[$__rate_interval]))) / on (model) group_left sum(b_total offset 5m) + -c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_ships_in_the_package(tmp_path):
    """setuptools' build_py (what a wheel holds, less the compiled extension) copies the
    JSON into textfleet/serve/dashboards/, its folder a package of the distribution (a
    data folder left out of ``packages`` draws setuptools' warning on every build)."""
    built = subprocess.run(
        [sys.executable, "setup.py", "build_py", "--build-lib", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "absent from the `packages` configuration" not in built.stderr, built.stderr
    shipped = tmp_path / "textfleet" / "serve" / "dashboards" / DASHBOARD.name
    assert shipped.read_bytes() == DASHBOARD.read_bytes()


# ---------------------------------------------------------------- a running server

TEXTS = ["The quick brown fox.", "Zürich café ☕ naïve", "日本語のテキスト"]
LONG_TEXT = "the committee reviewed the quarterly figures in detail " * 8  # > the queue bound
PLAIN, VERSIONED, POOL = "dash", "dashv", "dashp"
POOL_MEMBERS = ("a", "b")


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, tmp_path_factory):
    """A plain model with a small queue (so one long text is too large for it and a
    burst is refused), a versioned model whose shadow is the same directory, and a pool
    of two copies of it that holds one member at a time (so calls to both evict)."""
    from serving import deploy_lean_models, linked_copy

    port = ray_serve["port"]
    model = str(model_dir.path)
    folder = tmp_path_factory.mktemp("dashboard")
    for member in POOL_MEMBERS:
        linked_copy(model_dir.path, folder / "members" / member)
    pool = {"model_root": str(folder / "members"), "max_models_per_replica": 1}
    small_queue = {"max_batch_tokens": 64, "max_queue_tokens": 64, "workers": 1}
    models = [
        # No warmup: its widths need more than this small queue holds.
        {"name": PLAIN, "model_dir": model, "batching": small_queue, "warmup": False},
        {
            "name": VERSIONED,
            "versions": [
                {"version": "1", "model_dir": model, "weight": 50},
                {"version": "2", "model_dir": model, "weight": 50},
            ],
            "shadow": {"version": "s", "model_dir": model, "percent": 100},
        },
        {"name": POOL, "pool": pool, "warmup": False},
    ]
    deploy_lean_models(folder, models, port)
    return {
        "url": f"http://127.0.0.1:{port}",
        "ray": f"http://127.0.0.1:{ray_serve['metrics_port']}/metrics",
        "ingress": ray_serve["ingress"],
    }


def exported(url: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its series, from one scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    return out


JSON = {"content-type": "application/json"}


async def burst(url: str, n: int) -> list[int]:
    """Statuses of ``n`` requests to the plain model sent at once."""
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=JSON) as http:
        body = v2_body(TEXTS[:2])
        replies = await asyncio.gather(
            *(http.post(f"/v2/models/{PLAIN}/infer", content=body) for _ in range(n))
        )
    return [r.status_code for r in replies]


def until(status: int, send, tries: int = 10) -> None:
    """Send until one reply has ``status`` (a race the server wins most times)."""
    seen: list[int] = []
    for _ in range(tries):
        seen += send()
        if status in seen:
            return
    raise AssertionError(f"no {status} in {tries} tries: {sorted(set(seen))}")


def send_traffic(url: str) -> None:
    """Answers of each kind the dashboard counts: 200s, a 400, a 413 (too large for
    the engine's queue), 503s (a burst past the queue bound), a 504 (its deadline
    passed in the queue); the pool's members in turns (each call a load and an
    eviction)."""
    with httpx.Client(base_url=url, timeout=60, headers=JSON) as http:
        for _ in range(5):
            for model in (PLAIN, VERSIONED):
                reply = http.post(f"/v2/models/{model}/infer", content=v2_body(TEXTS))
                assert reply.status_code == 200, reply.text
        # The split is random: each version once by name, so both have served.
        for version in ("1", "2"):
            path = f"/v2/models/{VERSIONED}/versions/{version}/infer"
            reply = http.post(path, content=v2_body(TEXTS))
            assert reply.status_code == 200, reply.text
        for member in (*POOL_MEMBERS, POOL_MEMBERS[0]):
            reply = http.post(f"/v2/models/{POOL}/{member}/infer", content=v2_body(TEXTS))
            assert reply.status_code == 200, reply.text
        assert http.post(f"/v2/models/{PLAIN}/infer", content=b"{bad").status_code == 400
        too_large = http.post(f"/v2/models/{PLAIN}/infer", content=v2_body([LONG_TEXT]))
        assert too_large.status_code == 413, too_large.text
        hurried = orjson.dumps({**orjson.loads(v2_body(TEXTS)), "parameters": {"timeout": 1}})
        until(504, lambda: [http.post(f"/v2/models/{PLAIN}/infer", content=hurried).status_code])
    until(503, lambda: asyncio.run(burst(url, 16)))


def wait_for(url: str, names: set[str], labels: dict[str, str], timeout_s: float = 90):
    """The scrape, once every name in ``names`` has a series with ``labels``."""
    deadline = time.monotonic() + timeout_s
    while True:
        series = exported(url)
        missing = {
            n for n in names if not any(labels.items() <= s.items() for s in series.get(n, ()))
        }
        if not missing:
            return series
        assert time.monotonic() < deadline, f"not exported with {labels}: {sorted(missing)}"
        time.sleep(2)


@pytest.mark.slow
def test_every_metric_the_dashboard_reads_is_exported_by_ray(served):
    send_traffic(served["url"])
    names = {n for n in dashboard_metrics() if n.startswith("ray_")}
    ours = {n for n in names if n.startswith("ray_textfleet_")}
    pools = {n for n in ours if n.startswith("ray_textfleet_pool_")}
    assert len(pools) == 5, pools  # loaded members, loads, evictions, cold loads, requests
    routers = {n for n in ours if n.startswith(("ray_textfleet_version_", "ray_textfleet_shadow_"))}
    per_model = ours - pools - routers
    wait_for(served["ray"], per_model, {"model": PLAIN, "version": "1"})
    series = wait_for(served["ray"], routers, {"model": VERSIONED})
    # The pool's own series, and its members' under "<pool>/<id>" (what picking the pool
    # in the model variable shows in the per-model rows).
    pool_series = wait_for(served["ray"], pools, {"model": POOL, "version": "1"})
    member = {"model": f"{POOL}/{POOL_MEMBERS[0]}", "version": "1"}
    wait_for(served["ray"], {"ray_textfleet_requests_total"}, member)
    evictions = pool_series["ray_textfleet_pool_evictions_total"]
    assert any(s["model"] == POOL and s["reason"] == "lru" for s in evictions), evictions
    requests = pool_series["ray_textfleet_pool_member_requests_total"]
    assert {s["member"] for s in requests if s["model"] == POOL} == set(POOL_MEMBERS)
    # The versioned model's replicas say which version they are.
    for version in ("1", "2", "s"):
        labels = {"model": VERSIONED, "version": version}
        wait_for(served["ray"], {"ray_textfleet_requests_total"}, labels)
    versions = {
        s["version"]
        for s in exported(served["ray"])["ray_textfleet_requests_total"]
        if s["model"] == VERSIONED
    }
    assert versions == {"1", "2", "s"}
    agreement = [
        s for s in series["ray_textfleet_shadow_agreement_count"] if s["model"] == VERSIONED
    ]
    assert {s["version"] for s in agreement} == {"s"} and agreement[0]["measure"] == "cosine"
    # Ray Serve's own metrics, per application.
    wait_for(served["ray"], names - ours, {"application": PLAIN})


@pytest.mark.slow
def test_every_haproxy_metric_the_dashboard_reads_is_on_haproxys_page(served):
    if served["ingress"] != "haproxy":
        pytest.skip(f"ingress {served['ingress']}: no HAProxy page")
    port = os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"]  # picked at start (serve/network.py)
    names = {n for n in dashboard_metrics() if n.startswith("haproxy_")}
    assert names
    send_traffic(served["url"])
    wait_for(f"http://127.0.0.1:{port}/metrics", names, {"proxy": f"http-{PLAIN}"})


def test_every_metric_is_read_from_a_known_scrape_target():
    """Ray's metrics agent (ray_*) or HAProxy's page (haproxy_*): the README names both."""
    assert {n.split("_", 1)[0] for n in dashboard_metrics()} == {"ray", "haproxy"}
