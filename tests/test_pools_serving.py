"""A pool on a real Ray Serve over real HTTP, at the figures of a small fleet: twenty
member directories, ``max_models_per_replica: 4``, two replicas. Every member answers
like its model alone, no replica ever holds more than four engines (threads counted
too), a member new to a full replica evicts that replica's least recently used, a
hundred calls in a row to one member load it once; path escapes are 404, a corrupt
member is 503 while the others answer; the repository API, the metrics.

The members, under a tmp model_root made of the exported test models (hard links):
twenty copies of the categorium classifier, one of MiniLM (embeddings: a member routed
to the wrong engine would answer in the wrong shape) and one corrupt directory; beside
the root, a valid model reached only through a symlink that leaves the root.

What a replica holds depends on where each call went: a call naming a member goes to a
replica holding it when one does (Ray's multiplexed routing), HTTP to a member's own
path and a call naming none reach either. So the checks are per replica: ``statuses()``
asks until both replicas answered, and each repository load says which replica it
reached.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import numpy as np
import orjson
import pytest
from serving import deploy_lean_models, linked_copy

from textfleet.engine.engine import Engine
from textfleet.serve.protocols.common import NotFound

TEXTS = ["The match ended in a draw after extra time.", "Stocks fell sharply on Monday.", "ok"]
CLASSIFIERS = [f"c{i:02d}" for i in range(1, 21)]
MEMBERS = ["broken", *CLASSIFIERS, "e1"]  # what the pool lists, sorted
MAX = 4
REPLICAS = 2


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
        "num_replicas": REPLICAS,
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
    """pool_status of the replica the call reached (either: it names no member)."""
    from ray import serve

    return serve.get_app_handle("intents").pool_status.remote().result(timeout_s=60)


def statuses() -> dict[str, dict]:
    """pool_status of every replica, by replica id. Ray sends a call naming no member to
    either of two idle replicas at random, so a few calls reach both."""
    seen: dict[str, dict] = {}
    for _ in range(64):
        reply = status()
        seen[reply["replica"]] = reply
        if len(seen) == REPLICAS:
            return seen
    raise AssertionError(f"only replicas {sorted(seen)} answered")


def holders(member: str) -> list[str]:
    """The replicas holding ``member`` now."""
    return [r for r, s in statuses().items() if member in s["loaded"]]


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


def visit(http, members) -> None:
    """One V2 call to each member, in order."""
    for member in members:
        outputs(infer(http, member))


def touch(http, member: str) -> str:
    """Load (or just use) ``member`` through the repository API; the replica it reached."""
    r = http.post(f"/v2/repository/models/intents/{member}/load")
    assert r.status_code == 200, r.text
    return r.json()["loaded_on"]


def lru_after(held: list[str], member: str) -> tuple[list[str], str | None]:
    """A replica's members (least recently used first) after a call to ``member``, and
    the member that call evicted (None if none)."""
    if member in held:
        return [m for m in held if m != member] + [member], None
    evicted = held[0] if len(held) >= MAX else None
    return [m for m in held if m != evicted] + [member], evicted


# ---------------------------------------------------------------- answers


def test_every_member_answers_like_its_model_alone(served, references):
    http = served["http"]
    want = references["classify"]
    for member in CLASSIFIERS:
        got = outputs(infer(http, member))
        assert list(got["label"]) == [r[0].label for r in want], member
        np.testing.assert_allclose(
            got["score"], [r[0].score for r in want], atol=1e-5, err_msg=member
        )
        # The member's handle methods take the model server's keywords, priority included.
        got = handle(member).classify.remote(TEXTS, priority=0).result(timeout_s=60)
        assert got == want, member
    got = outputs(infer(http, "e1"))
    np.testing.assert_allclose(got["embedding"], references["embed"], atol=1e-5)
    for replica in statuses().values():
        assert replica["peak_engines_alive"] <= MAX, replica


def test_member_routes_and_names(served, references):
    import tritonclient.http as triton

    http = served["http"]
    meta = http.get("/v2/models/intents/c01")
    assert meta.status_code == 200 and meta.json()["name"] == "intents/c01"
    ready = http.get("/v2/models/intents/c01/ready").json()
    assert ready == {"name": "intents/c01", "ready": True}
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
        labels = client.infer("intents/c02", [inp]).as_numpy("label")
        labels = [x.decode() if isinstance(x, bytes) else x for x in labels]
        assert labels == [r[0].label for r in references["classify"]]
    finally:
        client.close()
    # The pool's own prefix lists its members.
    index = http.get("/v2/models/intents").json()
    assert index["members"] == MEMBERS


# ---------------------------------------------------------------- the LRU


def test_touching_one_more_evicts_the_least_recently_used(served):
    """Per replica, every touch checked: the member moves to the most recent end; one
    new to a replica holding MAX evicts its least recently used, whose engine closes."""
    http = served["http"]
    held = {r: s["loaded"] for r, s in statuses().items()}
    evicted = []
    # Ten distinct members over two replicas: one replica gets five or more of them, so
    # it evicts at least once whatever it held before; then the first again.
    for member in [*CLASSIFIERS[:10], CLASSIFIERS[0]]:
        replica = touch(http, member)
        want, out = lru_after(held[replica], member)
        now = {r: s["loaded"] for r, s in statuses().items()}
        assert now == {**held, replica: want}, (member, replica, held)
        held = now
        evicted += [out] if out else []
    assert evicted
    for replica in statuses().values():
        assert replica["engines_alive"] == len(replica["loaded"]) <= MAX, replica


def test_engines_and_threads_stay_bounded(served):
    http = served["http"]
    # First some loads and evictions, so that the threads they use exist before counting.
    visit(http, CLASSIFIERS[: 2 * MAX + 1])
    before = statuses()
    visit(http, CLASSIFIERS)
    after = statuses()
    for replica, now in after.items():
        assert now["engines_alive"] == len(now["loaded"]) <= MAX, now
        assert now["peak_engines_alive"] <= MAX, now
        # Loads and evictions by the dozen: a leak of even one thread per engine would show.
        assert now["threads"] <= before[replica]["threads"] + 2, (before[replica], now)

    def loads(view: dict[str, dict]) -> int:
        return sum(sum(s["loads"].values()) for s in view.values())

    # Twenty members, at most MAX held by each replica before: the others were loaded.
    assert loads(after) >= loads(before) + len(CLASSIFIERS) - REPLICAS * MAX


def test_hundred_calls_load_once(served, references):
    """Calls naming a member go to the replica that holds it (Ray's multiplexed routing):
    a hundred in a row to a member no replica holds load it once, on one replica."""
    before = statuses()
    member = next(m for m in CLASSIFIERS if not any(m in s["loaded"] for s in before.values()))
    assert handle(member).classify.remote(TEXTS).result(timeout_s=60) == references["classify"]
    # Routers learn which replica holds a member from Serve's controller, which hears it
    # from the replica after the load: calls in that moment may go to any replica.
    time.sleep(3)
    for _ in range(99):
        reply = handle(member).classify.remote(TEXTS).result(timeout_s=60)
        assert reply == references["classify"]
    loads = {
        r: s["loads"].get(member, 0) - before[r]["loads"].get(member, 0)
        for r, s in statuses().items()
    }
    assert sorted(loads.values()) == [0, 1], loads
    assert holders(member) == [r for r, n in loads.items() if n]


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
    before = statuses()
    code, body = raw_post(served["port"], path)
    assert code == 404, body
    for replica, now in statuses().items():
        assert now["loads"] == before[replica]["loads"] and "escape" not in now["loaded"]


@pytest.mark.parametrize("member", ["../outside", "escape", "/etc", "a/b", "%2e%2e", ""])
def test_handle_and_body_escapes_are_404(served, member):
    with pytest.raises(NotFound, match="intents"):
        handle(member).classify.remote(TEXTS).result(timeout_s=60)
    r = served["http"].post("/v1/embeddings", json={"model": f"intents/{member}", "input": "x"})
    assert r.status_code == 404, r.text
    for now in statuses().values():
        assert "outside" not in now["loads"] and "escape" not in now["loads"]


def test_corrupt_member_is_503_naming_it_while_others_answer(served):
    http = served["http"]
    r = infer(http, "broken")
    assert r.status_code == 503 and "'broken'" in r.json()["error"], r.text
    assert r.headers["retry-after"]
    outputs(infer(http, "c01"))
    assert holders("broken") == []


# ---------------------------------------------------------------- repository API


def test_repository_index_load_unload(served):
    http = served["http"]
    loaded_on = touch(http, "c02")
    views = {r: set(s["loaded"]) for r, s in statuses().items()}
    # The index is the view of the replica that answered it (either: it names no member):
    # the members that replica holds are READY on it. Asked until the replica that loaded
    # c02 answered.
    for _ in range(64):
        index = http.post("/v2/repository/index").json()
        assert [e["name"] for e in index] == [f"intents/{m}" for m in MEMBERS]
        ready = {e["member"] for e in index if e["state"] == "READY"}
        answered = {r for e in index for r in e["loaded_on"]}
        assert len(answered) <= 1 and ready in views.values(), (answered, ready, views)
        if answered == {loaded_on}:
            break
    else:
        raise AssertionError(f"the index never came from {loaded_on}")
    assert ready == views[loaded_on] and "c02" in ready
    state = {e["member"]: (e["state"], e["reason"]) for e in index}
    assert state["broken"] == ("UNAVAILABLE", "not loaded")
    ready_only = http.post("/v2/repository/index", json={"ready": True}).json()
    assert {e["member"] for e in ready_only} in views.values()
    assert all(e["state"] == "READY" and e["loaded_on"] for e in ready_only)

    # An unload drops the copy of the replica it reaches (one holding the member, when any
    # does): as many as there are copies, then none is left and an unload says so.
    copies, dropped = len(holders("c02")), 0
    for _ in range(2 * REPLICAS):
        if not holders("c02"):
            break
        r = http.post("/v2/repository/models/intents/c02/unload")
        assert r.status_code == 200 and r.json()["name"] == "intents/c02", r.text
        dropped += r.json()["unloaded"]
    assert holders("c02") == [] and dropped == copies >= 1
    assert http.post("/v2/repository/models/intents/c02/unload").json()["unloaded"] is False
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
    assert any('member="c01"' in x for x in lines if "member_requests" in x)
    assert any('reason="lru"' in x for x in lines if "evictions" in x)
    loads = [x for x in lines if "pool_loads" in x]
    assert any('outcome="error"' in x for x in loads), loads
