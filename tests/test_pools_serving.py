"""A pool on a real Ray Serve over real HTTP: members answer like their models alone, the
LRU holds at most max_models_per_replica engines (threads too), path escapes are 404,
a corrupt member is 503 while the others answer, the repository API, the metrics.

One replica, ``max_models_per_replica: 2``, six members under a tmp model_root made
of the exported test models (hard links): four copies of the categorium classifier,
one of MiniLM (embeddings: a member routed to the wrong engine would answer in the
wrong shape) and one corrupt directory; beside the root, a valid model reached only
through a symlink that leaves the root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from serving import deploy_lean_models

from textfleet.engine.engine import Engine
from textfleet.serve.protocols.common import NotFound

TEXTS = ["The match ended in a draw after extra time.", "Stocks fell sharply on Monday.", "ok"]
CLASSIFIERS = ["c1", "c2", "c3", "c4"]
MAX = 2


def linked_copy(src: Path, dst: Path) -> None:
    """The exported directory under another name, its files hard-linked (copied across
    file systems): a member of its own without the disk cost."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


@pytest.fixture(scope="module")
def served(ray_serve, categorium_dir, model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pools")
    root = tmp / "members"
    root.mkdir()
    for member in CLASSIFIERS:
        linked_copy(categorium_dir.path, root / member)
    linked_copy(model_dir.path, root / "e1")
    (root / "broken").mkdir()
    (root / "broken" / "textfleet.json").write_text("{ not json")
    linked_copy(categorium_dir.path, tmp / "outside")
    (root / "escape").symlink_to(tmp / "outside")
    entry = {
        "name": "intents",
        "pool": {"model_root": str(root), "max_models_per_replica": MAX},
        "warmup": False,
        "num_replicas": 1,
    }
    port = ray_serve["port"]
    deploy_lean_models(tmp, [entry], port)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        yield {
            "http": http,
            "port": port,
            "metrics_url": f"http://127.0.0.1:{ray_serve['metrics_port']}/metrics",
        }


@pytest.fixture(scope="module")
def references(categorium_dir, engine):
    classifier = Engine.load(categorium_dir, threads=1)
    yield {"classify": classifier.classify(TEXTS, top_k=1), "embed": engine.embed(TEXTS)}
    classifier.close()


def handle(member: str):
    from ray import serve

    return serve.get_app_handle("intents").options(multiplexed_model_id=member)


def status() -> dict:
    from ray import serve

    return serve.get_app_handle("intents").pool_status.remote().result(timeout_s=60)


def v2_body(texts) -> bytes:
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return orjson.dumps({"inputs": [inp]})


def infer(http, member: str, texts=TEXTS):
    return http.post(f"/v2/models/intents/{member}/infer", content=v2_body(texts))


def raw_post(port: int, path: str) -> tuple[int, bytes]:
    """POST ``path`` exactly as written (no client-side normalisation of dots or escapes)."""
    body = v2_body(["x"])
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head.encode() + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]


def outputs(r) -> dict[str, np.ndarray]:
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


# ---------------------------------------------------------------- answers


def test_every_member_answers_like_its_model_alone(served, references):
    http = served["http"]
    want = references["classify"]
    for member in CLASSIFIERS:
        got = outputs(infer(http, member))
        assert list(got["label"]) == [r[0].label for r in want]
        np.testing.assert_allclose(got["score"], [r[0].score for r in want], atol=1e-5)
        assert handle(member).classify.remote(TEXTS).result(timeout_s=60) == want
    got = outputs(infer(http, "e1"))
    np.testing.assert_allclose(got["embedding"], references["embed"], atol=1e-5)
    assert status()["peak_engines_alive"] <= MAX


def test_member_routes_and_names(served, references):
    import tritonclient.http as triton

    http = served["http"]
    meta = http.get("/v2/models/intents/c1")
    assert meta.status_code == 200 and meta.json()["name"] == "intents/c1"
    assert http.get("/v2/models/intents/c1/ready").json() == {"name": "intents/c1", "ready": True}
    r = http.post("/v1/embeddings", json={"model": "intents/e1", "input": TEXTS})
    assert r.status_code == 200, r.text
    got = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, references["embed"], atol=1e-5)
    r = http.post("/v2/models/intents/e1/v1/embeddings", json={"model": "intents/e1", "input": "x"})
    assert r.status_code == 200, r.text
    # tritonclient's model name is the member's full name.
    client = triton.InferenceServerClient(url=f"127.0.0.1:{served['port']}")
    try:
        inp = triton.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(np.array(TEXTS, dtype=object))
        labels = client.infer("intents/c2", [inp]).as_numpy("label")
        labels = [x.decode() if isinstance(x, bytes) else x for x in labels]
        assert labels == [r[0].label for r in references["classify"]]
    finally:
        client.close()
    # The pool's own prefix lists its members.
    index = http.get("/v2/models/intents").json()
    assert index["members"] == ["broken", *CLASSIFIERS, "e1"]


# ---------------------------------------------------------------- the LRU


def test_touching_one_more_evicts_the_least_recently_used(served):
    http = served["http"]
    for member in ("c1", "c2", "c1"):
        outputs(infer(http, member))
    assert status()["loaded"] == ["c2", "c1"]
    outputs(infer(http, "c3"))
    assert status()["loaded"] == ["c1", "c3"]


def test_engines_and_threads_stay_bounded(served):
    http = served["http"]
    for member in CLASSIFIERS:  # one round: the worker threads of evictions exist
        outputs(infer(http, member))
    before = status()
    for _ in range(3):
        for member in CLASSIFIERS:
            outputs(infer(http, member))
    after = status()
    assert after["engines_alive"] == len(after["loaded"]) == MAX
    assert after["peak_engines_alive"] <= MAX
    assert sum(after["loads"].values()) >= sum(before["loads"].values()) + 12
    # Twelve more loads and evictions: a leak of even one thread per engine would show.
    assert after["threads"] <= before["threads"] + 2, (before, after)


def test_hundred_calls_load_once(served):
    http = served["http"]
    r = http.post("/v2/repository/models/intents/c4/unload")
    assert r.status_code == 200, r.text
    before = status()["loads"].get("c4", 0)
    for _ in range(100):
        outputs(infer(http, "c4", ["one text"]))
    assert status()["loads"]["c4"] == before + 1


# ---------------------------------------------------------------- refusals


ESCAPES = [
    "/v2/models/intents/../outside/infer",
    "/v2/models/intents/%2e%2e/outside/infer",
    "/v2/models/intents/%2E%2E%2Foutside/infer",
    "/v2/models/intents/escape/infer",
    "/v2/models/intents//etc/infer",
    "/v2/models/intents/a%2Fb/infer",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_path_escapes_are_404_and_open_nothing(served, path):
    before = status()
    code, body = raw_post(served["port"], path)
    assert code == 404, body
    after = status()
    assert after["loads"] == before["loads"] and "escape" not in after["loaded"]


@pytest.mark.parametrize("member", ["../outside", "escape", "/etc", "a/b", "%2e%2e", ""])
def test_handle_and_body_escapes_are_404(served, member):
    with pytest.raises(NotFound, match="intents"):
        handle(member).classify.remote(TEXTS).result(timeout_s=60)
    r = served["http"].post("/v1/embeddings", json={"model": f"intents/{member}", "input": "x"})
    assert r.status_code == 404, r.text
    assert "outside" not in status()["loads"] and "escape" not in status()["loads"]


def test_corrupt_member_is_503_naming_it_while_others_answer(served):
    http = served["http"]
    r = infer(http, "broken")
    assert r.status_code == 503 and "'broken'" in r.json()["error"], r.text
    assert r.headers["retry-after"]
    outputs(infer(http, "c1"))
    assert "broken" not in status()["loaded"]


# ---------------------------------------------------------------- repository API


def test_repository_index_load_unload(served):
    http = served["http"]
    assert http.post("/v2/repository/models/intents/c2/load").status_code == 200
    index = http.post("/v2/repository/index").json()
    assert [e["name"] for e in index] == [f"intents/{m}" for m in ["broken", *CLASSIFIERS, "e1"]]
    state = {e["member"]: e["state"] for e in index}
    assert state["c2"] == "READY" and state["broken"] == "UNAVAILABLE"
    ready = http.post("/v2/repository/index", json={"ready": True}).json()
    assert {e["member"] for e in ready} == set(status()["loaded"])
    assert all(e["loaded_on"] for e in ready)

    r = http.post("/v2/repository/models/intents/c2/unload")
    assert r.status_code == 200 and r.json()["unloaded"] is True
    assert "c2" not in status()["loaded"]
    assert http.post("/v2/repository/models/intents/c2/unload").json()["unloaded"] is False
    r = http.post("/v2/repository/models/intents/broken/load")
    assert r.status_code == 503 and "'broken'" in r.text
    assert http.post("/v2/repository/models/intents/escape/load").status_code == 404
    assert http.post("/v2/repository/models/nopool/x/load").status_code == 404
    assert http.get("/v2/repository/index").status_code == 405


# ---------------------------------------------------------------- metrics


def test_pool_metrics(served):
    wanted = [
        "ray_textfleet_pool_loaded_members{",
        "ray_textfleet_pool_loads_total{",
        "ray_textfleet_pool_evictions_total{",
        "ray_textfleet_pool_load_latency_ms_bucket{",
        "ray_textfleet_pool_member_requests_total{",
    ]
    deadline, text = time.monotonic() + 90, ""  # Ray's agent exports every few seconds
    while time.monotonic() < deadline:
        text = httpx.get(served["metrics_url"], timeout=10).text
        lines = [x for x in text.splitlines() if 'model="intents"' in x]
        if all(any(x.startswith(w) for x in lines) for w in wanted) and any(
            'outcome="error"' in x for x in lines
        ):
            break
        asyncio.run(asyncio.sleep(1))
    lines = [x for x in text.splitlines() if 'model="intents"' in x]
    for w in wanted:
        assert any(x.startswith(w) for x in lines), (w, [x for x in lines if "_pool_" in x])
    assert any('member="c1"' in x for x in lines if "member_requests" in x)
    assert any('reason="lru"' in x for x in lines if "evictions" in x)
    loads = [x for x in lines if "pool_loads" in x]
    assert any('outcome="error"' in x for x in loads), loads
