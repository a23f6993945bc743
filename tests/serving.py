"""Helpers of the serving tests: V2 bodies, and what reaches below HTTP (replica
processes, raw sockets)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml


def v2_body(texts: list[str]) -> bytes:
    """A V2 infer request of ``texts`` as its one BYTES input ``text``."""
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return orjson.dumps({"inputs": [inp]})


def replica_processes(app: str) -> dict[str, int]:
    """Replica actor name -> its process id (asked of the actor itself)."""
    import ray

    out = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if isinstance(entry, dict) and entry["name"].startswith(f"SERVE_REPLICA::{app}#"):
            try:
                actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
                pid = actor.__ray_call__.remote(lambda _self: os.getpid())
                out[entry["name"]] = ray.get(pid, timeout=30)
            except (ValueError, ray.exceptions.RayActorError):
                continue  # a replica stopping between the listing and the lookup
    return out


def replica_pid(app: str) -> int:
    """The process id of the application's (one) replica."""
    pids = replica_processes(app)
    if not pids:
        raise LookupError(f"no replica of {app!r}")
    return next(iter(pids.values()))


def cli_status(address: str) -> str:
    """What ``textfleet status --address ADDRESS`` prints, run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "textfleet.cli", "status", "--address", address],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def thread_nice_values(app: str) -> set[int]:
    """The nice values of every thread of the application's replica processes."""
    values = set()
    for pid in replica_processes(app).values():
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            values.add(int(stat[stat.rindex(")") + 2 :].split()[16]))  # field 19: nice
    return values


def raw_request(port: int, head: str, chunks: list[bytes], timeout: float = 10.0):
    """Send ``head`` and ``chunks`` and read the status line, without finishing the body.
    Returns (status, seconds from the last byte sent to the status line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode())
        for c in chunks:
            s.sendall(c)
        sent = time.perf_counter()
        reply = b""
        while b"\r\n" not in reply:
            got = s.recv(4096)
            if not got:
                break
            reply += got
        return int(reply.split(b" ")[1]), time.perf_counter() - sent


def linked_copy(src: Path, dst: Path) -> None:
    """The exported directory ``src`` under another name, its files hard-linked (copied
    across file systems): a pool member of its own without the disk cost, and no
    symlink (a pool refuses a member whose directory resolves outside its root)."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def apply_one_model(folder: Path, name: str, model_dir: Path, port: int) -> None:
    """Apply a models.yaml of one lean model (one thread, no CPU reserved: it fits
    beside the session's other replicas) to the session's Ray Serve; returns at once."""
    from textfleet.serve import deploy
    from textfleet.serve.config import load_models
    from textfleet.serve.generate import serve_config

    entry = {
        "name": name,
        "model_dir": str(model_dir),
        "threads": 1,
        "ray_actor_options": {"num_cpus": 0},
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": port}, "models": [entry]}))
    deploy.apply(serve_config(load_models(path)))


def deploy_lean_models(
    folder: Path, models: list[dict], port: int, graphs: list[dict] | None = None
) -> tuple[Path, dict]:
    """Apply a models.yaml of ``models`` (entries of models.yaml, each made lean: one
    thread, no CPU reserved) and ``graphs`` to the session's Ray Serve and wait until
    every application and the gateway are RUNNING; the file written and its content."""
    from textfleet.serve import deploy
    from textfleet.serve.config import GATEWAY_APP, load_models
    from textfleet.serve.generate import serve_config

    lean = {"threads": 1, "ray_actor_options": {"num_cpus": 0}}
    path = folder / "models.yaml"
    config: dict = {"server": {"port": port}, "models": [{**m, **lean} for m in models]}
    if graphs:
        config["graphs"] = graphs
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = load_models(path)
    deploy.apply(serve_config(loaded))
    names = [*loaded.app_names(), GATEWAY_APP]
    states = deploy.wait(names, timeout_s=300)
    assert {n: str(s.status.value) for n, s in states.items()} == dict.fromkeys(names, "RUNNING")
    return path, config
