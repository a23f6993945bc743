"""``textfleet serve`` in a subprocess, as a user starts it: its own Ray, separate
from the session's ``ray_serve``, with ports of its own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from conftest import free_port

START_TIMEOUT_S = 300
INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}


def server_env(ingress: str) -> dict[str, str]:
    """This process's environment without the settings of the session's own Ray
    (its ingress, its address), and ports of HAProxy's pages and Serve's fallback
    proxy of its own: two Rays run on this machine during a test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TEXTFLEET_", "__RAY"))}
    env.update(
        TEXTFLEET_INGRESS=ingress,
        RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
        RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()),
        RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()),
    )
    return env


def wait_until_serving(proc: subprocess.Popen, url: str, stdout: Path, stderr: Path) -> None:
    """Until a V2 infer answers and the server has printed its addresses."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{stderr.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            answered = httpx.post(url, json=INFER, timeout=5).status_code == 200
            if answered and "Ctrl-C to stop" in stdout.read_text():
                return
        time.sleep(1)
    pytest.fail(f"no V2 infer answer within {START_TIMEOUT_S}s:\n{stderr.read_text()}")


def serve_log_tail(tree: list[int], lines: int = 40) -> str:
    """The last lines of the Serve controller's log of the server's own Ray (found
    through its GCS's ``--log_dir``): what a failed test about replicas or proxies
    needs to say why."""
    for pid in tree:
        with contextlib.suppress(psutil.Error):
            for arg in psutil.Process(pid).cmdline():
                if arg.startswith("--log_dir="):
                    logs = sorted(Path(arg.split("=", 1)[1], "serve").glob("controller_*.log"))
                    if logs:
                        return "\n".join(logs[-1].read_text().splitlines()[-lines:])
    return "(no Serve controller log found)"


def kill_tree(pids: list[int]) -> None:
    """SIGKILL what is left of the server's processes (a failed test's cleanup)."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


@contextlib.contextmanager
def running_server(tmp_path: Path, models: dict, ingress: str, model: str) -> Iterator[dict]:
    """``textfleet serve`` on ``models`` (a models.yaml as a dict), until ``model``
    answers a V2 infer on ``models["server"]["port"]``; stopped (SIGTERM, then
    SIGKILL of what is left of its process tree) on the way out. Yields its
    process, the process tree, and the paths of its stdout and stderr."""
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "textfleet.cli", "serve", "models.yaml"],
            cwd=tmp_path,
            env=server_env(ingress),
            stdout=out,
            stderr=err,
        )
    tree = [proc.pid]
    try:
        port = models["server"]["port"]
        wait_until_serving(proc, f"http://127.0.0.1:{port}/v2/models/{model}/infer", stdout, stderr)
        tree += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        yield {"proc": proc, "tree": tree, "stdout": stdout, "stderr": stderr}
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        kill_tree(tree)
