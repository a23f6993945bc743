"""A lean closed-loop HTTP/1.1 load generator, and per-process CPU accounting.

The load generator shares the machine with the servers it measures, so it
must cost little: raw asyncio streams with keep-alive, requests prebuilt as
bytes, no HTTP library on the hot path. Each client sends its next request as
soon as the previous answer is in (closed loop).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import psutil


@dataclass
class Request:
    head: bytes  # request line + headers, ready to write
    body: bytes
    n_texts: int


def make_request(host: str, port: int, method: str, path: str, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: keep-alive",
    ]
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class LevelResult:
    clients: int
    requests: int = 0
    texts: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms or [float("nan")])
        return {
            "clients": self.clients,
            "requests": self.requests,
            "texts": self.texts,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "texts_per_s": round(self.texts / self.wall_s, 2) if self.wall_s else 0.0,
            "requests_per_s": round(self.requests / self.wall_s, 2) if self.wall_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(chunks)
    return status, b""


async def _client(host, port, requests, next_index, result, deadline, max_requests):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            i = next_index[0]
            if i >= max_requests:
                break
            next_index[0] += 1
            req = requests[i % len(requests)]
            t0 = time.perf_counter()
            writer.write(req.head + req.body)
            try:
                status, _ = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.requests += 1
            if status == 200:
                result.texts += req.n_texts
            else:
                result.errors += 1
    finally:
        writer.close()


async def run_level(
    host: str,
    port: int,
    requests: list[Request],
    clients: int,
    max_requests: int,
    max_seconds: float,
) -> LevelResult:
    """``clients`` closed loops until ``max_requests`` are sent or ``max_seconds`` pass."""
    result = LevelResult(clients)
    next_index = [0]
    start = time.perf_counter()
    deadline = start + max_seconds
    await asyncio.gather(
        *(
            _client(host, port, requests, next_index, result, deadline, max_requests)
            for _ in range(clients)
        )
    )
    result.wall_s = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- CPU accounting


def process_role(p: psutil.Process) -> str | None:
    """A short role name for the processes that serve or load the benchmark."""
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "ray::ProxyActor" in cmd:
        return "ray proxy"
    if p.name() == "haproxy":
        return "haproxy"
    if "HAProxyManager" in cmd:
        return "ray haproxy manager"
    if "ray::ServeReplica" in cmd:
        return "replica " + cmd.split("ray::ServeReplica:", 1)[1].split()[0].split(":")[0]
    if "ray::ServeController" in cmd:
        return "ray controller"
    for name in ("raylet", "gcs_server", "log_monitor", "runtime_env"):
        if name in cmd:
            return "ray " + name
    if "dashboard" in cmd:  # the per-node agent: hosts the metrics agent
        return "ray dashboard agent"
    if "ray::" in cmd or "default_worker.py" in cmd:
        return "ray other"
    if "benchmarks.http_peers" in cmd:
        return "fastapi peer"
    return None


def cpu_snapshot(self_pid: int) -> dict[int, tuple[str, float]]:
    out = {}
    for p in psutil.process_iter():
        role = "load generator" if p.pid == self_pid else process_role(p)
        if role is None:
            continue
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[p.pid] = (role, t.user + t.system)
    return out


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent per role between two snapshots."""
    spent: dict[str, float] = {}
    for pid, (role, t1) in after.items():
        t0 = before.get(pid, (role, 0.0))[1]
        spent[role] = spent.get(role, 0.0) + max(0.0, t1 - t0)
    return spent
