"""Ray nodes on this machine for the multi-node tests: ``ray start --block``
processes (``Node``), the environment they and the drivers that join them run
with (``cluster_env``), the address Ray gives them (``node_ip``), and the two
things every cluster test does: ``textfleet serve --address`` (``serve_address``)
and a V2 infer through the HTTP port (``infer``).

Used by tests/test_cluster.py (Ray Serve) and tests/test_batch_cluster.py (Ray
Data). Everything that talks to such a cluster runs in a subprocess with
``cluster_env``: the test process may run a Ray of its own (conftest's
``ray_serve``), whose settings and address must not leak into the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from serving import v2_body

RAY = str(Path(sys.executable).with_name("ray"))


class Node:
    """One `ray start --block` process (and every process it starts)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.log: list[str] = []
        started = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.log.append(line)
                if "Ray runtime started" in line:
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(120):
            self.kill()
            raise RuntimeError("ray start did not start:\n" + "".join(self.log[-30:]))

    def kill(self) -> None:
        """SIGKILL to the node's whole process tree: as a machine that is lost."""
        import psutil

        try:
            tree = [self.proc, *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc.stdout.close()


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the nodes and of the drivers that join them: this process's
    without the settings of the Ray the test process may run itself (its single-machine
    switch, its HAProxy files and ports, its address), plus ``extra``, with token
    authentication (a driver given an explicit address must ask for it)."""
    own = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TEXTFLEET_"))}
    return {**own, **(extra or {}), "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ""}


def node_ip() -> str:
    """The address of every node here: this machine's outward one (Ray refuses a
    multi-node cluster on loopback)."""
    from ray._private.services import node_ip_address_from_perspective

    return node_ip_address_from_perspective()


def run(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 600):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def serve_address(
    models_yaml: Path, address: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """``textfleet serve models_yaml --address address``, as a user runs it."""
    cmd = [sys.executable, "-P", "-m", "textfleet.cli", "serve", str(models_yaml)]
    return run([*cmd, "--address", address], env)


def infer(
    port: int, texts: list[str], timeout: float = 30.0, model: str = "minilm"
) -> tuple[int, dict]:
    """A V2 infer of ``texts`` on 127.0.0.1:port: the status and the JSON answer (or
    the reply's text and headers for an error status)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        v2_body(texts),
        {"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {"reply": e.read().decode(errors="replace"), "headers": dict(e.headers)}
