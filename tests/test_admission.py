"""Admission, deadlines and the front door's policy, without Ray.

``decide`` and ``ThroughputMeter`` are pure; ``AdmissionGate`` runs on a real
engine whose queue is filled by a real burst; the HAProxy rewrite runs on the
installed Ray's template (and, when haproxy is installed, HAProxy checks the
lines it adds).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from textfleet.engine import Engine
from textfleet.engine.errors import InputError, Overloaded
from textfleet.serve import deadlines, ingress_policy
from textfleet.serve.admission import (
    HEADROOM,
    AdmissionGate,
    ThroughputMeter,
    decide,
    estimate_tokens,
)

# ---------------------------------------------------------------- decide


def test_no_deadline_or_no_measurement_admits():
    assert decide(10**6, 100, None, 5.0).admit
    assert decide(10**6, 100, 1000.0, None).admit
    assert decide(10**6, 100, 0.0, 5.0).admit


def test_admits_within_the_deadline_and_refuses_past_it():
    # 1000 tokens/s, 5 s deadline: HEADROOM x 5 s = 3.5 s of work may be ahead.
    ok = decide(3000, 400, 1000.0, 5.0, headroom=0.7)
    assert ok.admit and ok.wait_s == pytest.approx(3.4)
    no = decide(9000, 1000, 1000.0, 5.0)
    assert not no.admit and no.wait_s == pytest.approx(10.0)
    # Honest Retry-After: the queue must drain from 10 s of work to what fits.
    assert no.retry_after_s == pytest.approx(10.0 - 5.0 * HEADROOM)


def test_a_batch_behind_a_queue_counts_whole():
    """Behind 2000 queued tokens a request's batch holds up to 1000 more."""
    assert decide(2000, 100, 1000.0, 10.0, batch_tokens=1000).wait_s == pytest.approx(3.1)
    assert decide(0, 100, 1000.0, 10.0, batch_tokens=1000).wait_s == pytest.approx(0.1)


def test_an_empty_queue_always_admits():
    """A request larger than its deadline alone would not fare better later."""
    assert decide(0, 10**6, 1000.0, 1.0).admit


def test_retry_after_is_at_least_a_second_and_bounded():
    assert decide(3600, 0, 1000.0, 5.0, headroom=0.7).retry_after_s == 1.0
    assert decide(10**9, 0, 1.0, 5.0).retry_after_s == 60.0


def test_estimate_tokens_truncates_at_max_length():
    assert estimate_tokens(["", "abcd" * 10], 512) == 2 + 12
    assert estimate_tokens(["x" * 10_000], 256) == 256


# ---------------------------------------------------------------- meter


def test_meter_measures_finished_tokens_per_busy_second():
    meter = ThroughputMeter(alpha=0.5, min_s=0.1)
    assert meter.tokens_per_s is None
    meter.observe(5, 2.0)  # a fresh replica's first sample: one-time costs, skipped
    assert meter.tokens_per_s is None
    meter.observe(100, 0.05)  # too short to judge
    assert meter.tokens_per_s is None
    meter.observe(1000, 1.0)
    assert meter.tokens_per_s == pytest.approx(1000)
    # Slower now (500 tokens in 2 s): EWMA of tokens (750) and seconds (1.5).
    meter.observe(500, 2.0)
    assert meter.tokens_per_s == pytest.approx(500)
    # Faster again (2000 in 1 s): tokens 750 -> 1375, seconds 1.5 -> 1.25.
    meter.observe(2000, 1.0)
    assert meter.tokens_per_s == pytest.approx(1375 / 1.25)


# ---------------------------------------------------------------- gate on a real engine


def test_gate_refuses_what_cannot_meet_its_deadline(model_dir):
    eng = Engine.load(model_dir, threads=1, batching={"workers": 1})
    gate = AdmissionGate(eng)
    long_text = "word " * 400

    async def burst():
        # Measure first (samples of at least min_s, the first one skipped), then
        # fill the queue far past what 0.5 s computes.
        # Requests overlap, as under load: an idle engine's time is no sample.
        for _ in range(30):
            await asyncio.gather(*(gate.aembed([long_text] * 4, timeout=30) for _ in range(4)))
            if gate.meter.tokens_per_s:
                break
        rate = gate.meter.tokens_per_s
        assert rate and rate > 0
        backlog = [asyncio.ensure_future(eng.aembed([long_text] * 8)) for _ in range(20)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="deadline") as refused:
            await gate.aembed([long_text], timeout=0.5)
        assert refused.value.retry_after_s >= 1.0
        # No deadline: not the gate's to refuse.
        ok = asyncio.ensure_future(gate.aembed(["short"]))
        for task in backlog:
            task.cancel()
        await asyncio.gather(*backlog, return_exceptions=True)
        return await ok

    try:
        assert asyncio.run(burst()).shape == (1, eng.info.dim)
        assert gate.info is eng.info  # everything else is the engine's
    finally:
        eng.close()


def test_gate_measures_the_pace_the_engine_keeps_under_load(model_dir):
    """The meter's rate agrees with the tokens a saturated engine got through per
    second of the same run (loosely: both see whatever shares the cores)."""
    eng = Engine.load(model_dir)
    gate = AdmissionGate(eng)
    text = "word " * 100

    async def load():
        return await asyncio.gather(*(gate.aembed([text] * 4, timeout=60) for _ in range(40)))

    try:
        asyncio.run(load())  # the first sample (a fresh engine's) is skipped
        tokens0, _ = eng.compute_totals()
        start = time.perf_counter()
        asyncio.run(load())
        wall = time.perf_counter() - start
        tokens1, _ = eng.compute_totals()
        achieved = (tokens1 - tokens0) / wall
        rate = gate.meter.tokens_per_s
        assert rate is not None
        assert 0.5 * achieved < rate < 2.0 * achieved, (rate, achieved)
    finally:
        eng.close()


# ---------------------------------------------------------------- deadlines


def test_client_timeout_header_parses_seconds():
    assert deadlines.parse_header(None) is None
    assert deadlines.parse_header("2.5") == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(InputError, match="x-request-timeout"):
            deadlines.parse_header(bad)


def test_a_client_may_shorten_the_deadline_never_lengthen_it():
    assert deadlines.effective(30.0, None, None) == 30.0
    assert deadlines.effective(30.0, 5.0, None) == 5.0
    assert deadlines.effective(30.0, 60.0, 90.0) == 30.0
    assert deadlines.effective(None, None, 2.0) == 2.0
    assert deadlines.effective(None) is None


def test_client_timeout_is_scoped_to_the_request():
    assert deadlines.requested() is None
    with deadlines.client_timeout(3.0):
        assert deadlines.requested() == 3.0
    assert deadlines.requested() is None


# ---------------------------------------------------------------- HAProxy policy


def test_haproxy_template_gets_timeouts_and_json_errors():
    from ray.serve._private import haproxy_templates

    out = ingress_policy.haproxy_template(haproxy_templates.HAPROXY_CONFIG_TEMPLATE)
    assert "timeout http-request 10s" in out and "timeout http-keep-alive 15s" in out
    assert "errorfile 50" not in out  # Ray's plain-text 500 for every error
    assert out.count("http-error status") == 4
    assert "http-after-response set-status 503 if { status 502 }" in out
    assert "status 404" not in out.split("backend default_backend", 1)[1].split("backend ")[0]
    with pytest.raises(RuntimeError, match="ray-proxy"):
        ingress_policy.haproxy_template("defaults\n    mode http\n")


def test_replica_connections_per_request_closes_each_replica_connection(monkeypatch):
    from ray.serve._private import haproxy_templates

    from textfleet.serve.config import ServerConfig

    template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    monkeypatch.setenv(ingress_policy.REPLICA_CONNECTIONS_ENV, "keep_alive")
    assert "http-server-close" not in ingress_policy.haproxy_template(template)
    monkeypatch.setenv(ingress_policy.REPLICA_CONNECTIONS_ENV, "per_request")
    out = ingress_policy.haproxy_template(template)
    defaults = out.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert "\n    option http-server-close\n" in defaults
    assert ServerConfig().replica_connections == "keep_alive"
    with pytest.raises(ValueError, match="replica_connections"):
        ServerConfig(replica_connections="sometimes")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_the_lines_we_add(tmp_path):
    cfg = tmp_path / "h.cfg"
    cfg.write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n"
        "    timeout server 1s\n"
        + ingress_policy.haproxy_errors()
        + "frontend f\n    bind 127.0.0.1:1\n"
        + ingress_policy._FRONTEND_RULES
        + "    default_backend b\nbackend b\n    server s 127.0.0.1:1\n"
    )
    done = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
