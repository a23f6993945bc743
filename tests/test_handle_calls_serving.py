"""A call between our deployments fails the same by reference and by gRPC (real Ray Serve).

Our deployments call each other through serve/forwarding.py; the session's Ray
runs with serve/deploy.py's ``LEAN_ENV``, so those calls go by gRPC, while a
cluster started without it calls by reference. ``Caller`` (tests/hook_modules/
handle_calls.py) calls ``Callee`` each way and reports what our code sees: the
callee's own exception (type, message, field, status, Retry-After), a replica
killed mid-call retried once then 503, our deadline a 504 that cancels the
callee's work, messages past gRPC's default 4 MiB, the multiplexed member.
"""

from __future__ import annotations

import time

import pytest
from handle_calls import CALLEE, CALLER, FAILURES

from textfleet.serve.protocols.common import error_status

pytestmark = pytest.mark.slow

TRANSPORTS = {"by reference": True, "by gRPC": False}


@pytest.fixture(scope="module")
def caller(ray_serve):
    from ray import serve

    from textfleet.serve import deploy
    from textfleet.serve.config import ServerConfig
    from textfleet.serve.generate import serve_options

    server = ServerConfig(port=ray_serve["port"], grpc_port=ray_serve["grpc_port"])
    apps = [
        {"name": CALLEE, "route_prefix": f"/{CALLEE}", "import_path": "handle_calls:callee_app"},
        {"name": CALLER, "route_prefix": f"/{CALLER}", "import_path": "handle_calls:caller_app"},
    ]
    deploy.apply(serve_options(server) | {"applications": apps})
    states = deploy.wait([CALLEE, CALLER], timeout_s=180)
    running = {n: str(s.status.value) for n, s in states.items()}
    assert running == dict.fromkeys([CALLEE, CALLER], "RUNNING"), running
    return serve.get_app_handle(CALLER)


def outcomes(caller, method: str, *args, **kwargs) -> dict[str, dict]:
    return {
        name: caller.outcome.remote(by_ref, method, *args, **kwargs).result(timeout_s=120)
        for name, by_ref in TRANSPORTS.items()
    }


def wait_for_callee_replicas(n: int = 2, timeout_s: float = 120) -> None:
    """Until Serve has ``n`` RUNNING replicas of the callee again (after a kill)."""
    from ray import serve

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app = serve.status().applications.get(CALLEE)
        if app is not None and str(app.status.value) == "RUNNING":
            replicas = app.deployments["Callee"].replica_states.items()
            states = {getattr(k, "value", str(k)): v for k, v in replicas}
            if states.get("RUNNING", 0) == n and sum(states.values()) == n:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the callee has not {n} running replicas after {timeout_s} s")


def wait_until_routed_to_both(caller, by_ref: bool, timeout_s: float = 60) -> None:
    """Until the caller's router sends calls to both callee replicas. Serve's status
    says a restarted replica is RUNNING before the caller's router has heard of it;
    a kill while the router knows one replica leaves the retry nothing to go to but
    a replica that is still starting."""
    pids: set[int] = set()
    end = time.monotonic() + timeout_s
    while len(pids) < 2:
        if time.monotonic() > end:
            raise TimeoutError(f"the caller reached only replicas {pids} in {timeout_s} s")
        # ``die`` with times=0 kills nothing: it answers its process id.
        got = caller.outcome.remote(by_ref, "die", "/nonexistent", 0).result(timeout_s=60)
        pids.add(got["result"])


def test_replicas_call_by_grpc_and_the_driver_by_reference(caller):
    from ray.serve._private import constants

    from textfleet.serve.deploy import LEAN_ENV

    got = caller.settings.remote().result(timeout_s=60)
    assert got == {
        "use_grpc_by_default": True,
        "proxy_use_grpc": False,
        "max_message_length": int(LEAN_ENV["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]),
    }
    # This process imported Ray Serve before start_ray set the environment: its
    # handles keep Ray's defaults, which blocking ``.result()`` needs.
    assert not constants.RAY_SERVE_USE_GRPC_BY_DEFAULT
    assert constants.RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP


@pytest.mark.parametrize("kind", list(FAILURES))
def test_the_callees_own_error_arrives_as_raised(caller, kind):
    raised = FAILURES[kind]
    expected = {
        "type": type(raised).__name__,
        "message": str(raised),
        "http_status": error_status(raised),
        "field": getattr(raised, "field", None),
        "status": getattr(raised, "status", None),
        "retry_after_s": getattr(raised, "retry_after_s", None),
    }
    caller.take_lookups.remote().result(timeout_s=60)
    got = outcomes(caller, "fail", kind)
    assert got == dict.fromkeys(TRANSPORTS, expected)
    # Our own errors keep the handle; another failure looks the application up
    # again (it may have been deleted or redeployed).
    lookups = 1 if kind != "bug" else 2
    assert caller.take_lookups.remote().result(timeout_s=60) == {True: lookups, False: lookups}


def test_messages_past_grpcs_default_limit_go_both_ways(caller):
    payload = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB each way
    got = outcomes(caller, "echo", payload)
    assert got == dict.fromkeys(TRANSPORTS, {"result": payload[::-1]})


def test_the_multiplexed_member_reaches_the_callee(caller):
    got = outcomes(caller, "member", member="m7")
    assert got == dict.fromkeys(TRANSPORTS, {"result": "m7"})


def test_a_replica_killed_mid_call_is_retried_once_then_503(caller, tmp_path):
    for name, by_ref in TRANSPORTS.items():
        wait_for_callee_replicas()
        wait_until_routed_to_both(caller, by_ref)
        counter = tmp_path / f"once-{by_ref}"
        got = caller.outcome.remote(by_ref, "die", str(counter), 1).result(timeout_s=120)
        assert counter.read_text() == "1" and isinstance(got.get("result"), int), (name, got)

        wait_for_callee_replicas()
        wait_until_routed_to_both(caller, by_ref)
        counter = tmp_path / f"twice-{by_ref}"
        got = caller.outcome.remote(by_ref, "die", str(counter), 2).result(timeout_s=120)
        assert counter.read_text() == "2", (name, got)
        assert got == {
            "type": "Unavailable",
            "message": f"model {CALLEE!r}: its replica stopped while serving this request; "
            "retry shortly",
            "http_status": 503,
            "field": None,
            "status": None,
            "retry_after_s": 1.0,
        }, name
    wait_for_callee_replicas()


def test_our_deadline_is_a_504_and_cancels_the_callees_work(caller, tmp_path):
    wait_for_callee_replicas()
    for by_ref in TRANSPORTS.values():
        wait_until_routed_to_both(caller, by_ref)
    for name, by_ref in TRANSPORTS.items():
        marker = tmp_path / f"cancelled-{by_ref}"
        start = time.monotonic()
        got = caller.outcome.remote(by_ref, "wait", 30.0, str(marker), timeout=2.0).result(
            timeout_s=60
        )
        took = time.monotonic() - start
        assert got["type"] == "TimeoutError" and got["http_status"] == 504, (name, got)
        assert got["message"] == f"model {CALLEE!r} did not answer within 2 s", (name, got)
        assert took < 12, (name, took)
        # The callee's sleep is cancelled, not left to run its 30 s. On a loaded
        # machine the call may still be in the router when the deadline passes:
        # then it is withdrawn and the callee never starts it.
        end = time.monotonic() + 10
        while time.monotonic() < end:
            state = marker.read_text() if marker.exists() else "never started"
            if state == "cancelled":
                break
            time.sleep(0.1)
        assert state in ("cancelled", "never started"), (name, state)
