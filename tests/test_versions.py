"""Versioned models without Ray: the schema, the generated applications, the split,
the comparisons and the shadow's bound. tests/test_versions_serving.py runs them
on a real Ray Serve."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from textfleet.engine.errors import Overloaded
from textfleet.engine.tasks.results import Entity, LabelScore, Ranked
from textfleet.serve.compare import canonical, compare, cosines, span_prf, spearman
from textfleet.serve.config import GATEWAY_APP, ConfigError, load_models, parse_models
from textfleet.serve.generate import serve_config
from textfleet.serve.metrics import VersionMetrics
from textfleet.serve.protocols.common import Reply
from textfleet.serve.shadow import Shadow, ShadowPlan
from textfleet.serve.shadow_replica import Mirror, ShadowComparer, request_texts
from textfleet.serve.traffic import TrafficPlan, sticky_point

CANARY = Path(__file__).parent / "configs" / "versions" / "canary.yaml"


# ---------------------------------------------------------------- schema and generation


def test_versions_become_applications_and_the_model_a_router():
    models = load_models(CANARY)
    config = serve_config(models)
    ServeDeploySchema.model_validate(config)  # as `serve deploy` reads it
    apps = {a["name"]: a for a in config["applications"]}
    assert list(apps) == [
        "categorium--v2", "categorium--v3", "categorium--v4", "categorium", "plain", GATEWAY_APP,
    ]  # fmt: skip
    assert models.app_names() == list(apps)[:-1]
    v3 = apps["categorium--v3"]
    assert v3["route_prefix"] == "/v2/models/categorium/versions/3"
    assert v3["import_path"] == "textfleet.serve.app:build_version_app"
    assert v3["deployments"][0]["name"] == "ModelVersion"
    assert v3["deployments"][0]["num_replicas"] == 2  # the version's override
    assert v3["args"]["threads"] == 2 and v3["args"]["task"] == "classification"
    assert v3["args"]["version"] == "3" and v3["args"]["name"] == "categorium"
    assert v3["args"]["model_dir"] == str((CANARY.parent / "../models/categorium-3").resolve())
    assert apps["categorium--v2"]["args"]["threads"] == 1  # the model's own
    router = apps["categorium"]
    assert router["route_prefix"] == "/v2/models/categorium"
    assert router["args"] == {"name": "categorium"}
    uc = router["deployments"][0]["user_config"]
    assert uc["weights"] == {"2": 90, "3": 10} and uc["sticky_header"] == "x-session-id"
    assert uc["shadow"]["version"] == "4" and uc["shadow"]["percent"] == 25
    assert uc["shadow"]["record"]["path"] == str(CANARY.parent / "shadow-categorium.jsonl")
    # An unversioned model is as before: no versioning keys reach its application.
    assert not {"versions", "traffic", "shadow"} & set(apps["plain"]["args"])
    assert apps["plain"]["import_path"] == "textfleet.serve.app:build_model_app"


def _with(path: Path, tmp: Path, edit) -> Path:
    data = yaml.safe_load(path.read_text())
    edit(data["models"][0])
    out = tmp / "models.yaml"
    out.write_text(yaml.safe_dump(data))
    (tmp / "../models").mkdir(exist_ok=True)
    return out


def test_weight_and_shadow_changes_touch_only_the_routers_user_config(tmp_path):
    def shift(m):
        m["versions"][0]["weight"], m["versions"][1]["weight"] = 10, 90
        m["shadow"]["percent"] = 100

    base = tmp_path / "a"
    base.mkdir()
    before = serve_config(load_models(_with(CANARY, base, lambda m: None)))
    after = serve_config(load_models(_with(CANARY, base, shift)))
    diff = [
        a["name"]
        for a, b in zip(before["applications"], after["applications"], strict=True)
        if a != b
    ]
    assert diff == ["categorium"]
    old, new = before["applications"][3], after["applications"][3]
    # Ray Serve rebuilds an application when import_path or args change; here only the
    # deployment's user_config does: a light update (reconfigure), no restart.
    assert (old["import_path"], old["args"]) == (new["import_path"], new["args"])
    assert new["deployments"][0]["user_config"]["weights"] == {"2": 10, "3": 90}


def test_the_shadow_runs_in_the_background_and_promoting_it_restarts_nothing(tmp_path):
    base = tmp_path / "a"
    base.mkdir()
    config = serve_config(load_models(_with(CANARY, base, lambda m: None)))
    user = {a["name"]: a["deployments"][0]["user_config"] for a in config["applications"]}
    assert user["categorium--v4"]["background"] is True  # the shadow
    assert "background" not in user["categorium--v2"] and "background" not in user["plain"]

    def shared(m):
        m["shadow"]["cpu_priority"] = "shared"

    assert "background" not in _user_config(_with(CANARY, base, shared), "categorium--v4")

    def promote(m):  # the shadow becomes a version taking 10% of the traffic
        shadow = m.pop("shadow")
        m["versions"].append({"version": shadow["version"], "model_dir": shadow["model_dir"],
                              "weight": 10})  # fmt: skip

    before = next(a for a in config["applications"] if a["name"] == "categorium--v4")
    promoted = serve_config(load_models(_with(CANARY, base, promote)))
    after = next(a for a in promoted["applications"] if a["name"] == "categorium--v4")
    assert (before["import_path"], before["args"]) == (after["import_path"], after["args"])
    assert "background" not in after["deployments"][0]["user_config"]


def _user_config(path: Path, app: str) -> dict:
    apps = serve_config(load_models(path))["applications"]
    return next(a for a in apps if a["name"] == app)["deployments"][0]["user_config"]


def test_background_sets_every_thread_and_the_threads_started_later():
    # In a child process: a nice value cannot be lowered again without privileges.
    code = """
import os, threading
from textfleet.serve import cpu_priority
ready, stop = threading.Event(), threading.Event()
early = threading.Thread(target=lambda: (ready.set(), stop.wait()), daemon=True)
early.start(); ready.wait()
assert cpu_priority.set_background(True) == 0 and cpu_priority.is_background()
later = []
def note():
    later.append((os.sched_getscheduler(0) == os.SCHED_IDLE, os.getpriority(os.PRIO_PROCESS, 0)))
t = threading.Thread(target=note); t.start(); t.join()
now = set()
for tid in (int(x) for x in os.listdir("/proc/self/task")):
    try:  # a joined thread can stay listed until the kernel has reaped it
        now.add((os.sched_getscheduler(tid) == os.SCHED_IDLE, os.getpriority(os.PRIO_PROCESS, tid)))
    except ProcessLookupError:
        pass
print(sorted(now), later)
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # Every thread, the early one and one started afterwards: SCHED_IDLE at nice 19.
    assert out.stdout.split("\n")[0] == "[(True, 19)] [(True, 19)]", (out.stdout, out.stderr)


def test_a_version_whose_directory_records_another_task_is_refused(tmp_path):
    for name, task in (("a", "embedding"), ("b", "classification")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "textfleet.json").write_text(json.dumps({"task": task}))
    entry = {
        "name": "m",
        "versions": [
            {"version": "1", "model_dir": str(tmp_path / "a"), "weight": 1},
            {"version": "2", "model_dir": str(tmp_path / "b"), "weight": 1},
        ],
    }
    with pytest.raises(ConfigError, match=r"model 'm': .*version '2': field 'task': "):
        parse_models({"models": [entry]})


# ---------------------------------------------------------------- the split


def test_weights_split_in_proportion_and_zero_is_never_picked():
    plan = TrafficPlan({"a": 90, "b": 10, "c": 0})
    counts = Counter(plan.pick() for _ in range(100_000))
    assert set(counts) == {"a", "b"}
    # 99.9% binomial interval of p = 0.1, n = 100,000: +- 3.29 * sqrt(n p (1 - p)).
    assert abs(counts["b"] - 10_000) <= 3.29 * math.sqrt(100_000 * 0.1 * 0.9)
    assert plan.shares() == {"a": 0.9, "b": 0.1, "c": 0.0}


def test_sticky_keys_always_pick_the_same_version_in_proportion():
    plan = TrafficPlan({"a": 50, "b": 50}, sticky_header="X-Session")
    assert plan.sticky_header == "x-session"
    picks = {f"s{i}": plan.pick(f"s{i}") for i in range(4000)}
    assert all(plan.pick(k) == v for k, v in list(picks.items())[:500])
    assert abs(Counter(picks.values())["a"] - 2000) < 3.29 * math.sqrt(4000 * 0.25)
    assert sticky_point("s1") == sticky_point("s1") and 0 <= sticky_point("") < 1


def test_excluding_a_version_picks_another_or_none():
    plan = TrafficPlan({"a": 1, "b": 1})
    assert {plan.pick(exclude={"a"}) for _ in range(50)} == {"b"}
    assert plan.pick(exclude={"a", "b"}) is None


@pytest.mark.parametrize("weights", [{}, {"a": 0}, {"a": -1, "b": 2}])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        TrafficPlan(weights)


# ---------------------------------------------------------------- comparisons


def test_cosine_per_row():
    a = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32)
    b = np.array([[2, 0], [1, 1], [0, 0]], dtype=np.float32)
    np.testing.assert_allclose(cosines(a, b), [1.0, 1 / math.sqrt(2), 1.0])
    assert compare(canonical("embed", a), canonical("embed", b))["cosine"][0] == 1.0


def test_classification_top1_and_score_difference():
    p = [[LabelScore("x", 0.9)], [LabelScore("y", 0.6)]]
    s = [[LabelScore("x", 0.8)], [LabelScore("z", 0.5)]]
    got = compare(canonical("classify", p), canonical("classify", s))
    assert got["top1_agreement"] == [1.0, 0.0]
    np.testing.assert_allclose(got["score_diff"], [0.1, 0.1], atol=1e-9)
    # The V2 form (top_k 2: best first) compares the same way.
    v2p = {"label": np.array([["x", "q"]], dtype=object), "score": np.array([[0.9, 0.1]])}
    v2s = {"label": np.array([["x", "r"]], dtype=object), "score": np.array([[0.7, 0.2]])}
    got = compare(canonical("v2_infer", v2p), canonical("v2_infer", v2s))
    assert got["top1_agreement"] == [1.0] and got["score_diff"][0] == pytest.approx(0.2)
    # A graph step's call (infer_arrays) answers the same arrays.
    got = compare(canonical("infer_arrays", v2p), canonical("infer_arrays", v2s))
    assert got["top1_agreement"] == [1.0] and got["score_diff"][0] == pytest.approx(0.2)


def test_spans_precision_recall_f1_on_exact_spans():
    e = lambda s, t, lab: Entity(lab, "", s, t, 0.9)  # noqa: E731
    p = [[e(0, 4, "PER"), e(10, 15, "LOC")], [], [e(1, 2, "X")]]
    s = [[e(0, 4, "PER"), e(10, 14, "LOC"), e(20, 25, "ORG")], [], []]
    got = compare(canonical("entities", p), canonical("entities", s))
    assert got["span_precision"] == pytest.approx([1 / 3, 1.0, 0.0])
    assert got["span_recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert got["span_f1"] == pytest.approx([0.4, 1.0, 0.0])
    assert span_prf({(0, 1, "A")}, {(0, 1, "B")}) == (0.0, 0.0, 0.0)  # label counts


def test_pair_scoring_rank_correlation_and_top1():
    # Spearman by hand: ranks [0,1,2,3] vs [0,2,1,3]: 1 - 6 * 2 / (4 * 15) = 0.8.
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    # Ties take their mean rank: [0.5,0.5,2,3] vs [3,1.5,1.5,0]; Pearson of the ranks:
    # sum(da * db) = -3.75, sum(da^2) = sum(db^2) = 4.5.
    ties = spearman(np.array([1.0, 1, 2, 3]), np.array([3.0, 2, 2, 1]))
    assert ties == pytest.approx(-3.75 / 4.5)
    got = compare(canonical("score", [0.1, 0.9, 0.5]), canonical("score", [0.2, 0.8, 0.9]))
    assert got["top1_agreement"] == [0.0] and got["rank_correlation"] == [pytest.approx(0.5)]
    ranked_p = [Ranked(1, 0.9), Ranked(2, 0.5), Ranked(0, 0.1)]
    ranked_s = [Ranked(1, 0.8), Ranked(0, 0.3)]  # top_k cut a different tail
    got = compare(canonical("rerank", ranked_p), canonical("rerank", ranked_s))
    assert got == {"top1_agreement": [1.0], "rank_correlation": [1.0]}


def test_gateway_replies_compare_like_their_structured_forms():
    from textfleet.serve.protocols import openai, v1
    from textfleet.serve.protocols.common import Reply, dumps

    emb = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    for fmt in ("float", "base64"):
        req = openai.EmbeddingsRequest("m", ["a", "b"], fmt, None)
        got = canonical("openai_embeddings", openai.embeddings_reply(req, emb, 3))
        assert got[0] == "vectors"
        np.testing.assert_array_equal(got[1], emb)
    assert canonical("v1_predict", v1.predict_reply(list(emb)))[0] == "vectors"
    labels = v1.predict_reply([{"label": "x", "score": 0.5}])
    assert canonical("v1_predict", labels) == ("labels", [("x", 0.5)])
    spans = v1.predict_reply(
        [[{"label": "PER", "text": "Al", "start": 0, "end": 2, "score": 1.0}], []]
    )
    assert canonical("v1_predict", spans) == ("spans", [{(0, 2, "PER")}, set()])
    assert canonical("v1_predict", v1.predict_reply([0.5, 0.25]))[0] == "ranking"
    results = {"model": "m", "results": [{"index": 2, "relevance_score": 0.9}]}
    assert canonical("rerank_http", Reply(200, dumps(results))) == ("ranking", {2: 0.9})
    with pytest.raises(ValueError, match="error reply"):
        canonical("v1_predict", Reply(503, b"{}"))


# ---------------------------------------------------------------- the shadow's bound


class SlowReplica:
    """Where the shadow's ``ModelServer`` answers: ``embed`` returns (twice the identity:
    cosine 1 with the primary's) once released, or fails."""

    def __init__(self):
        self.release = asyncio.Event()
        self.fail = False

    async def embed(self, texts, timeout=None):
        await self.release.wait()
        if self.fail:
            raise RuntimeError("engine down")
        if texts == ["late"]:
            raise TimeoutError("request timed out after 30 s")
        if texts == ["full"]:
            raise Overloaded("the engine's queue is full", 1.0)
        return np.eye(len(texts), dtype=np.float32) * 2


def test_shadow_mirrors_at_most_max_in_flight_and_counts_the_rest(tmp_path):
    """The router's bound and figures (serve/shadow.py) over the shadow replica's
    comparison (serve/shadow_replica.py), a plain call where Ray Serve has a handle."""

    async def scenario():
        shadow, comparer = Shadow("m", VersionMetrics("m")), ShadowComparer("m", "s")
        replica = SlowReplica()
        record = tmp_path / "pairs.jsonl"
        shadow.configure(ShadowPlan("s", 100.0, 4, record_path=str(record), record_sample=1.0))
        primary, args = np.eye(3, dtype=np.float32), (["a", "b", "c"], None)

        async def send(version, mirror):
            assert version == "s" and mirror.primary_version == "1"
            return await comparer.run(replica, mirror)

        async def unreachable(version, mirror):
            raise RuntimeError("shadow down")

        for _ in range(10):  # returns at once: the primary never waits for the shadow
            shadow.mirror(send, "embed", args, {}, "1", primary)
        assert shadow.in_flight == 4
        replica.release.set()
        while shadow.in_flight:
            await asyncio.sleep(0.01)
        shadow.mirror(unreachable, "embed", args, {}, "1", primary)  # counted by the router
        # No capacity on the shadow (its deadline, its full queue): dropped, not errors.
        for text in ("late", "full"):
            shadow.mirror(send, "embed", ([text], None), {}, "1", primary[:1])
        while shadow.in_flight:
            await asyncio.sleep(0.01)
        replica.fail = True
        shadow.mirror(send, "embed", args, {}, "1", primary)  # counted by the shadow
        while shadow.in_flight:
            await asyncio.sleep(0.01)
        return shadow.status(), record

    status, record = asyncio.run(scenario())
    figures = status["versions"]["s"]
    assert (figures["ok"], figures["dropped"], figures["errors"]) == (4, 8, 2)
    assert figures["mean"]["cosine"] == pytest.approx(1.0)
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["shadow"] == "s" and lines[0]["primary"] == "1"
    assert "inputs" not in lines[0] and len(lines[0]["inputs_sha256"]["text"][0]) == 64


@pytest.mark.parametrize(("status", "dropped"), [(503, True), (504, True), (500, False)])
def test_a_v2_mirror_the_shadow_had_no_capacity_for_is_dropped_not_an_error(status, dropped):
    class Answering:
        async def v2_infer(self, body, timeout, **kwargs):
            return Reply(status, b'{"error": "..."}'), None

    mirror = Mirror("v2_infer", (b"{}", None), {}, "1", {})
    summary = asyncio.run(ShadowComparer("m", "s").run(Answering(), mirror))
    assert (summary.ok, summary.dropped) == (False, dropped)


def test_a_mirrored_request_names_its_texts_for_the_record():
    body = orjson.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    )
    assert request_texts("v2_infer", (body, None), {}) == {"text": ["a", "b"]}
    openai_body = orjson.dumps({"model": "m", "input": "x"})
    assert request_texts("openai_embeddings", (openai_body, None), {}) == {"input": ["x"]}
    assert request_texts("score", ([("q", "d")], False), {}) == {"query": ["q"], "document": ["d"]}
    rerank = request_texts("rerank", ("q", ["d", "e"]), {})
    assert rerank == {"query": ["q"], "document": ["d", "e"]}
    assert request_texts("embed", (["t"], None), {}) == {"text": ["t"]}
    arrays = {"text": np.array(["a", "b"], dtype=object)}
    assert request_texts("infer_arrays", (arrays, {"top_k": 2}), {}) == {"text": ["a", "b"]}
