"""Closed-loop HTTP load on loopback: textfleet vs the usual ways to serve the same model.

In one run, on the same exported model and onnxruntime thread count:

1. ``fastapi``: FastAPI + uvicorn wrapper, tokenizer + onnxruntime per request;
2. ``ray-batch``: a hand-written Ray Serve deployment with ``@serve.batch``;
3. ``textfleet``: the V2 infer route of ``serve/``;
4. ``textfleet-versions`` / ``textfleet-shadow``: the same route of a versioned
   model, two versions of the same directory at 50/50 behind the model's
   router, and the same with a 100% shadow (a third copy, at its default
   background CPU priority): what the split and the mirror cost next to the
   unversioned model.

Each gets 1, 16 and 64 concurrent clients sending 1-4 texts per request
drawn from the workload (benchmarks/data/texts.jsonl.gz), bounded by ``--max-requests`` and
``--max-seconds`` per level. Also measured: the offline compute limit of the
same texts (tokenized ahead, length-sorted batches of 32, onnxruntime only),
the latency of trivial routes (the fixed cost of each HTTP path), the CPU
each process spends per request (where the time goes), and textfleet's other
routes beside V2 on the same server (benchmarks/http_routes.py: OpenAI
``/v1/embeddings`` and ``/v1/rerank``, shared and per model, at
``--route-levels`` clients, taking turns; the reranker from
``--rerank-model-dir``, skipped when that directory is missing).

Writes benchmarks/results/http_load.{json,md,png}.

    python -m benchmarks.http_load [--model-dir artifacts/models/all-MiniLM-L6-v2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson

from benchmarks.common import (
    DEFAULT_MODEL_DIR,
    RESULTS,
    ROOT,
    ensure_model_dir,
    load_texts,
    machine_info,
)
from benchmarks.http_routes import EMBEDDING_ROUTES, ROUTES, compare_routes, route_requests
from benchmarks.loadgen import (
    Request,
    cpu_by_role,
    cpu_snapshot,
    make_request,
    run_level,
)

HOST = "127.0.0.1"
MODEL = "minilm"
RERANKER = "reranker"
DEFAULT_RERANK_DIR = ROOT / "artifacts" / "models" / "ms-marco-MiniLM-L-12-v2"  # the served one


def request_mix(texts: list[str], n: int, seed: int = 0) -> list[list[str]]:
    """``n`` requests of 1-4 texts each, the same for every system."""
    rng = random.Random(seed)
    return [rng.sample(texts, rng.randint(1, 4)) for _ in range(n)]


def plain_requests(mix, port, path) -> list[Request]:
    out = []
    for texts in mix:
        body = orjson.dumps({"texts": texts})
        out.append(Request(make_request(HOST, port, "POST", path, body), body, len(texts)))
    return out


def v2_requests(mix, port) -> list[Request]:
    out = []
    for texts in mix:
        inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
        body = orjson.dumps({"inputs": [inp]})
        path = f"/v2/models/{MODEL}/infer"
        out.append(Request(make_request(HOST, port, "POST", path, body), body, len(texts)))
    return out


def probe(port: int, method: str, path: str, body: bytes = b"", n: int = 200) -> float:
    """p50 latency (ms) of one route, one client: the fixed cost of a path."""
    req = Request(make_request(HOST, port, method, path, body), body, 1)
    res = asyncio.run(run_level(HOST, port, [req], 1, n, 30.0))
    if res.errors:
        raise RuntimeError(f"probe {method} {path}: {res.errors} errors {res.statuses}")
    return res.summary()["p50_ms"]


def measure(
    name: str, port: int, requests: list[Request], args, levels=None, mirrors=None
) -> list[dict]:
    """Each level's figures; ``mirrors``: a callable giving the shadow's mirror counts so
    far (``shadow_mirrors``), recorded per level as ``row["shadow_mirrors"]``."""
    asyncio.run(run_level(HOST, port, requests, 4, 40, 30.0))  # warm up
    rows = []
    for clients in levels or args.levels:
        before = cpu_snapshot(os.getpid())
        mirrored = mirrors() if mirrors else None
        res = asyncio.run(
            run_level(HOST, port, requests, clients, args.max_requests, args.max_seconds)
        )
        spent = cpu_by_role(before, cpu_snapshot(os.getpid()))
        row = res.summary()
        if mirrors:
            after = mirrors()
            row["shadow_mirrors"] = {k: after[k] - mirrored[k] for k in after}
        busy = sorted(((r, s) for r, s in spent.items() if s > 0.01), key=lambda kv: -kv[1])
        row["cpu_ms_per_request"] = {
            r: round(1000.0 * s / max(res.requests, 1), 2) for r, s in busy
        }
        row["cpu_percent"] = {r: round(100.0 * s / res.wall_s, 1) for r, s in busy}
        print(
            f"  {name:14s} {clients:3d} clients: {row['texts_per_s']:7.1f} texts/s  "
            f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
            f"errors {row['errors']}",
            flush=True,
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------- systems


def saturate(name: str, port: int, method: str, path: str, body: bytes, args) -> dict:
    """A route that does no model work, at 16 clients: the HTTP path's own cost."""
    req = Request(make_request(HOST, port, method, path, body), body, 1)
    capped = argparse.Namespace(**{**vars(args), "max_requests": args.overhead_requests})
    return measure(name, port, [req], capped, levels=[16])[0]


def run_fastapi(args, mix) -> tuple[list[dict], dict]:
    port = args.port + 1
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.http_peers",
        "--model-dir",
        str(args.model_dir),
        "--port",
        str(port),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        _wait_http(port, "/health")
        rows = measure("fastapi", port, plain_requests(mix, port, "/embed"), args)
        probes = {"fastapi GET /health": probe(port, "GET", "/health")}
        args.overhead["fastapi GET /health"] = saturate(
            "fastapi trivial", port, "GET", "/health", b"", args
        )
        return rows, probes
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_http(port: int, path: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"nothing answered 200 on port {port}{path}")


def textfleet_models(args, system: str = "textfleet"):
    from textfleet.serve.config import parse_models

    def entry_for(name: str, model_dir: Path) -> dict:
        return {
            "name": name,
            "model_dir": str(model_dir),
            # The same compute threads as the peers, split as textfleet
            # splits them by default: `workers` batches side by side.
            "threads": max(1, args.threads // args.workers),
            "batching": {"workers": args.workers},
            "ray_actor_options": {"num_cpus": 0},
        }

    entry = entry_for(MODEL, args.model_dir)
    entries = [entry]
    # The reranker idles while the embedder is measured (and the other way round).
    if any(r not in EMBEDDING_ROUTES for r in args.routes):
        entries.append(entry_for(RERANKER, args.rerank_model_dir))
    if system in ("textfleet-versions", "textfleet-shadow"):
        model_dir = entry.pop("model_dir")
        entry["versions"] = [
            {"version": "a", "model_dir": model_dir, "weight": 50},
            {"version": "b", "model_dir": model_dir, "weight": 50},
        ]
    if system == "textfleet-shadow":
        entry["shadow"] = {"version": "s", "model_dir": str(args.model_dir), "percent": 100}
    return parse_models({"server": {"port": args.port}, "models": entries})


def textfleet_config(args, system: str = "textfleet") -> dict:
    from textfleet.serve.generate import serve_config

    return serve_config(textfleet_models(args, system))


def measure_routes(system: str, args, mix) -> dict[str, list[dict]]:
    """textfleet's routes side by side on this server (benchmarks/http_routes.py)."""
    print(f"  {system}: routes side by side", flush=True)
    requests = {
        route: route_requests(route, mix, HOST, args.port, MODEL, RERANKER) for route in args.routes
    }
    return compare_routes(
        requests,
        HOST,
        args.port,
        args.route_levels,
        args.route_max_requests,
        args.route_max_seconds,
        args.route_rounds,
    )


def peer_config(args) -> dict:
    return {
        "http_options": {"host": HOST, "port": args.port},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": [
            {
                "name": "peer",
                "route_prefix": "/peer",
                "import_path": "benchmarks.http_peers:ray_batch_app",
                "args": {"model_dir": str(args.model_dir), "threads": args.threads},
            }
        ],
    }


RAY_SYSTEMS = (
    "ray-batch",
    "textfleet",
    "textfleet-ray-proxy",
    "textfleet-versions",
    "textfleet-shadow",
)


def run_ray_system(system: str, args) -> dict:
    """One Ray-based system in a fresh process with a fresh Ray: each is measured
    as it is deployed. The hand-written peer gets Ray Serve's defaults (its
    Python HTTP proxy); textfleet gets what ``textfleet serve`` sets up
    (HAProxy ingress when installed); ``textfleet-ray-proxy`` is textfleet
    through Ray's proxy, to show what the ingress is worth."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "benchmarks.http_load", "--child", system]
        argv += ["--child-out", str(out), *sys.argv[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        subprocess.run(argv, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())


def child_main(args) -> int:
    """Runs in the subprocess of ``run_ray_system``."""
    mix = request_mix(load_texts(args.pool), args.max_requests)
    args.overhead = {}
    args.routes_out = {}
    rows, probes, ingress = _measure_ray_system(args.child, args, mix)
    args.child_out.write_bytes(
        orjson.dumps(
            {
                "rows": rows,
                "probes": probes,
                "overhead": args.overhead,
                "ingress": ingress,
                "routes": args.routes_out,
            }
        )
    )
    return 0


def _measure_ray_system(system: str, args, mix) -> tuple[list, dict, str]:
    import ray
    from ray import serve

    from textfleet.serve import deploy

    env = dict(kv.split("=", 1) for kv in args.ray_env)
    if system == "ray-batch":  # the usual way: Ray's defaults
        os.environ.update(env)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="serve")
        ingress = "ray-proxy"
    else:
        want = "ray-proxy" if system == "textfleet-ray-proxy" else args.ingress
        ingress = deploy.start_ray(num_cpus=2, env=env, log_to_driver=False, ingress=want)
    probes: dict = {}
    try:
        if system == "ray-batch":
            deploy.apply(peer_config(args))
            _check_running(deploy.wait(["peer"], timeout_s=300))
            rows = measure(system, args.port, plain_requests(mix, args.port, "/peer"), args)
            probes["ray-batch GET /peer (trivial)"] = probe(args.port, "GET", "/peer")
            args.overhead["ray-batch GET /peer"] = saturate(
                "ray-batch trivial", args.port, "GET", "/peer", b"", args
            )
            return rows, probes, ingress
        config = textfleet_config(args, system)
        deploy.apply(config)
        names = [app["name"] for app in config["applications"]]
        _check_running(deploy.wait(names, timeout_s=300))
        mirrors = shadow_mirrors if system == "textfleet-shadow" else None
        rows = measure(system, args.port, v2_requests(mix, args.port), args, mirrors=mirrors)
        one = v2_requests([[mix[0][0]]], args.port)[0].body
        ready, live = f"/v2/models/{MODEL}/ready", "/v2/health/live"
        probes.update(
            {
                f"{system} GET /v2/models/m/ready (-> replica)": probe(args.port, "GET", ready),
                f"{system} GET /v2/health/live (-> gateway)": probe(args.port, "GET", live),
                f"{system} POST infer, 1 text": probe(
                    args.port, "POST", f"/v2/models/{MODEL}/infer", one
                ),
            }
        )
        args.overhead[f"{system} GET /v2/models/m/ready"] = saturate(
            f"{system} ready", args.port, "GET", ready, b"", args
        )
        args.overhead[f"{system} GET /v2/health/live"] = saturate(
            f"{system} live", args.port, "GET", live, b"", args
        )
        if args.routes:
            args.routes_out.update(measure_routes(system, args, mix))
        return rows, probes, ingress
    finally:
        serve.shutdown()
        ray.shutdown()


def shadow_mirrors() -> dict[str, int]:
    """The shadow's mirrors so far, as the model's router counts them: answered, failed
    and dropped (past ``max_in_flight``, or for want of the shadow's capacity). Waits
    (up to 10 s) for the mirrors still out, so that a level's count is all of its own."""
    from ray import serve

    handle = serve.get_app_handle(MODEL)
    end = time.monotonic() + 10
    while True:
        status = handle.versions_status.remote().result(timeout_s=10)
        shadow = status["shadow"]
        if not shadow["in_flight"] or time.monotonic() > end:
            break
        time.sleep(0.2)
    tallies = shadow["versions"].values()
    return {k: sum(t[k] for t in tallies) for k in ("ok", "errors", "dropped")}


def _check_running(states) -> None:
    for name, app in states.items():
        if str(app.status.value) != "RUNNING":
            raise RuntimeError(f"application {name!r} is {app.status.value}: {app.message}")


# ---------------------------------------------------------------- offline limit


def offline_limit(args, mix) -> dict:
    """Compute-only throughput: tokenized ahead, length-sorted batches of 32."""
    import numpy as np

    from benchmarks.http_peers import PlainEmbedder

    texts = list(dict.fromkeys(t for req in mix[: args.offline_requests] for t in req))
    model = PlainEmbedder(str(args.model_dir), args.threads)
    model.tok.no_padding()
    encs = model.tok.encode_batch(texts)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    batches = []
    for s in range(0, len(order), 32):
        rows = [encs[i] for i in order[s : s + 32]]
        width = max(len(e.ids) for e in rows)
        feeds = {}
        for key, attr in (
            ("input_ids", "ids"),
            ("attention_mask", "attention_mask"),
            ("token_type_ids", "type_ids"),
        ):
            a = np.zeros((len(rows), width), dtype=np.int64)
            for r, e in enumerate(rows):
                a[r, : len(e.ids)] = getattr(e, attr)
            feeds[key] = a
        batches.append({k: feeds[k] for k in model.input_names})
    t0 = time.perf_counter()
    for feeds in batches:
        hidden = model.session.run(None, feeds)[0]
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        (hidden * mask).sum(axis=1)
    wall = time.perf_counter() - t0
    return {
        "texts": len(texts),
        "seconds": round(wall, 3),
        "texts_per_s": round(len(texts) / wall, 2),
    }


def engine_latency(args, text: str, n: int = 100) -> float:
    """p50 ms of Engine.embed on one text, in process: the compute floor of one request."""
    import numpy as np

    from textfleet.engine.engine import Engine

    threads = max(1, args.threads // args.workers)
    with Engine.load(args.model_dir, threads=threads, batching={"workers": args.workers}) as engine:
        engine.embed([text])
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            engine.embed([text])
            times.append((time.perf_counter() - t0) * 1000.0)
    return round(float(np.percentile(times, 50)), 2)


# ---------------------------------------------------------------- report


def main() -> int:
    args = parse_args()
    args.model_dir = ensure_model_dir(args.model_dir)
    _check_routes(args)
    if args.workers is None:
        from textfleet.engine.engine import default_workers

        args.workers = min(default_workers("cpu"), args.threads)
    if args.child:
        return child_main(args)
    mix = request_mix(load_texts(args.pool), args.max_requests)
    results: dict = {"config": _config(args), "systems": {}, "probes_p50_ms": {}}
    args.overhead = results["overhead_16_clients"] = {}
    started = time.time()
    # The limit is measured before and after the systems: the machine's speed
    # drifts, and the mean of the two brackets the servers' runs.
    limit_before = offline_limit(args, mix)
    if "fastapi" in args.systems:
        rows, probes = run_fastapi(args, mix)
        results["systems"]["fastapi"] = rows
        results["probes_p50_ms"].update(probes)
    results["ingress"] = {}
    results["routes"] = {}
    for system in (s for s in RAY_SYSTEMS if s in args.systems):
        got = run_ray_system(system, args)
        results["systems"][system] = got["rows"]
        if got.get("routes"):
            results["routes"][system] = got["routes"]
        results["probes_p50_ms"].update(got["probes"])
        results["overhead_16_clients"].update(got["overhead"])
        results["ingress"][system] = got["ingress"]
    results["probes_p50_ms"]["Engine.embed, 1 text, in process"] = engine_latency(args, mix[0][0])
    limit_after = offline_limit(args, mix)
    results["offline_limit"] = {
        "texts": limit_after["texts"],
        "texts_per_s": round((limit_before["texts_per_s"] + limit_after["texts_per_s"]) / 2, 2),
        "before": limit_before,
        "after": limit_after,
    }
    results["wall_s"] = round(time.time() - started, 1)
    results["loadavg_1m_after"] = os.getloadavg()[0]
    from benchmarks.http_report import write_reports

    paths = write_reports(results, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _check_routes(args) -> None:
    """Unknown route names are an error; without a reranker its routes are skipped."""
    unknown = [r for r in args.routes if r not in ROUTES]
    if unknown:
        sys.exit(f"--routes: unknown {', '.join(unknown)}; routes: {', '.join(ROUTES)}")
    given = args.rerank_model_dir is not None
    args.rerank_model_dir = Path(args.rerank_model_dir or DEFAULT_RERANK_DIR)
    reranks = any(r not in EMBEDDING_ROUTES for r in args.routes)
    if reranks and not (args.rerank_model_dir / "textfleet.json").is_file():
        if given:
            sys.exit(f"--rerank-model-dir {args.rerank_model_dir} is not a model directory")
        how = "textfleet export ms-marco-minilm-l12 -o " + str(DEFAULT_RERANK_DIR)
        print(f"no reranker at {args.rerank_model_dir} ({how}): rerank routes skipped")
        args.routes = [r for r in args.routes if r in EMBEDDING_ROUTES]


def _lean_env() -> dict:
    from textfleet.serve.deploy import LEAN_ENV

    return dict(LEAN_ENV)


def _config(args) -> dict:
    return {
        "model_dir": str(args.model_dir),
        "threads": args.threads,
        "textfleet_workers": args.workers,
        "levels": args.levels,
        "max_requests": args.max_requests,
        "max_seconds": args.max_seconds,
        "ray_env": args.ray_env,
        "ray_lean_env": _lean_env(),
        "cpus": os.cpu_count(),
        "machine": machine_info(),
        "texts_per_request": "1-4",
        "routes": args.routes,
        "route_levels": args.route_levels,
        "route_rounds": args.route_rounds,
        "route_max_requests": args.route_max_requests,
        "route_max_seconds": args.route_max_seconds,
        "rerank_model_dir": str(args.rerank_model_dir),
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help=f"default: {DEFAULT_MODEL_DIR}")
    p.add_argument(
        "--systems",
        default=",".join(("fastapi", *RAY_SYSTEMS)),
        type=lambda s: s.split(","),
    )
    p.add_argument(
        "--ingress",
        default="auto",
        choices=["auto", "haproxy", "ray-proxy"],
        help="textfleet's HTTP ingress (server.ingress in models.yaml)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--levels", default="1,16,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-requests", type=int, default=1500, help="per level")
    p.add_argument("--max-seconds", type=float, default=20.0, help="per level")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads, all systems")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="textfleet batches computed side by side, each on threads / workers "
        "onnxruntime threads (default: the engine's, 2 on 2+ cores)",
    )
    p.add_argument("--pool", type=int, default=5000, help="texts drawn from the workload")
    p.add_argument("--offline-requests", type=int, default=600)
    p.add_argument(
        "--overhead-requests",
        type=int,
        default=2000,
        help="requests of the trivial-route (HTTP path cost) runs",
    )
    p.add_argument("--port", type=int, default=18600)
    p.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for Ray's processes (repeatable)",
    )
    p.add_argument(
        "--routes",
        default=",".join(ROUTES),
        type=lambda s: [r for r in s.split(",") if r],
        help="textfleet routes measured side by side (benchmarks/http_routes.py); '' for none",
    )
    p.add_argument("--route-levels", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--route-rounds", type=int, default=3, help="turns the routes take per level")
    p.add_argument("--route-max-requests", type=int, default=600, help="per route and level")
    p.add_argument("--route-max-seconds", type=float, default=12.0, help="per route and level")
    p.add_argument(
        "--rerank-model-dir",
        default=None,
        help=f"pair-scoring model of the rerank routes (default: {DEFAULT_RERANK_DIR})",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "http_load")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
