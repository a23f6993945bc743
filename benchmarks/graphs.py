"""Inference graphs over HTTP: what a graph costs beside calling its models directly.

One local textfleet server (``deploy.start_ray``, the default ingress: HAProxy
when installed) serving an embedder and a second model (by default the rampart PII tagger,
exported from its recipe on first use: the README's ``enrich``, embeddings and
personal data in one call) and two graphs over them:

- ``one``: a one-step graph (the embedder alone), against ``POST`` to the
  embedder's own route: the graph's overhead (an ingress replica and a
  handle call more);
- ``enrich``: both models in parallel, against the client calling them one
  after the other on one connection (two round trips). The graph's hop costs
  a few milliseconds of Ray's (HTTP into the graph's replica, a handle call
  out): ``enrich`` wins when the second model takes longer than that, as a
  tagger of the embedder's size does; beside a model that answers in 2 ms
  (categorium's classifier, ``--second-model-dir``) two plain calls are faster.

Each at 1 and 64 closed-loop clients (``--levels``), one text per request, in
one run; the routes take turns within a level. Where the time goes: at one
client, the client's latency of a graph request beside the graph's own
``graph_ms`` and ``step_ms.*`` (its response parameters): the rest is HTTP and
the ingress. Writes ``results/graphs.{json,md}``. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import orjson

from benchmarks.common import (
    ROOT,
    ensure_model_dir,
    ensure_recipe_dir,
    load_texts,
    machine_info,
    table,
)
from benchmarks.loadgen import LevelResult, _read_response, make_request

HOST = "127.0.0.1"
EMBEDDER, SECOND = "minilm", "second"
SECOND_RECIPE = "rampart"
DEFAULT_SECOND_DIR = ROOT / "artifacts" / "models" / SECOND_RECIPE
ROUTES = ("direct", "graph-one", "sequential", "graph-enrich")
LABELS = {
    "direct": "embedder, its own route",
    "graph-one": "one-step graph",
    "sequential": "both models, two calls in a row",
    "graph-enrich": "enrich graph (both models in parallel)",
}


def models_yaml(args) -> dict:
    lean = {"threads": args.threads, "ray_actor_options": {"num_cpus": 0}}
    text = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    one_step = {"name": "embed", "model": EMBEDDER, "inputs": {"text": "$input.text"}}
    second_step = {"name": "second", "model": SECOND, "inputs": {"text": "$input.text"}}
    return {
        "server": {"port": args.port},
        "models": [
            {"name": EMBEDDER, "model_dir": str(args.model_dir), **lean},
            {"name": SECOND, "model_dir": str(args.second_model_dir), **lean},
        ],
        "graphs": [
            {
                "name": "one",
                "inputs": text,
                "steps": [one_step],
                "outputs": {"embedding": "embed.embedding"},
            },
            {
                "name": "enrich",
                "inputs": text,
                "steps": [one_step, second_step],
                "outputs": {"embedding": "embed.embedding", "second": _first_output(args)},
            },
        ],
    }


def _first_output(args) -> str:
    """``second.<its first output>``, from the task its model directory records."""
    from textfleet.engine.model_dir import ModelDir
    from textfleet.engine.tasks.registry import get_task

    task = get_task(ModelDir.open(args.second_model_dir).info.task)
    return f"second.{task.v2_outputs[0].name}"


def v2_body(text: str) -> bytes:
    inp = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}
    return orjson.dumps({"inputs": [inp]})


def route_rounds(route: str, texts: list[str], port: int) -> list[list[tuple[bytes, bytes]]]:
    """Per text, the requests a client sends in a row for ``route`` (head, body)."""
    paths = {
        "direct": [f"/v2/models/{EMBEDDER}/infer"],
        "graph-one": ["/v2/models/one/infer"],
        "sequential": [f"/v2/models/{EMBEDDER}/infer", f"/v2/models/{SECOND}/infer"],
        "graph-enrich": ["/v2/models/enrich/infer"],
    }[route]
    out = []
    for t in texts:
        body = v2_body(t)
        out.append([(make_request(HOST, port, "POST", p, body), body) for p in paths])
    return out


async def _client(port, rounds, next_index, result: LevelResult, deadline, max_rounds):
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline and next_index[0] < max_rounds:
            requests = rounds[next_index[0] % len(rounds)]
            next_index[0] += 1
            start, ok = time.perf_counter(), True
            for head, body in requests:  # one after the other, as a client without graphs
                writer.write(head + body)
                try:
                    status, _ = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # closed without an answer: counted as status 0, on a new connection
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                ok = ok and status == 200
            result.latencies_ms.append((time.perf_counter() - start) * 1000.0)
            result.requests += 1
            result.texts += int(ok)
            result.errors += int(not ok)
    finally:
        writer.close()


async def run_level(port, rounds, clients: int, max_rounds: int, max_seconds: float):
    result = LevelResult(clients)
    next_index, start = [0], time.perf_counter()
    deadline = start + max_seconds
    await asyncio.gather(
        *(_client(port, rounds, next_index, result, deadline, max_rounds) for _ in range(clients))
    )
    result.wall_s = time.perf_counter() - start
    return result


def measure(args, texts: list[str]) -> dict[str, list[dict]]:
    """Each route at each level; within a level the routes take ``--rounds`` turns."""
    rounds = {r: route_rounds(r, texts, args.port) for r in ROUTES}
    rows: dict[str, list[dict]] = {r: [] for r in ROUTES}
    for r in ROUTES:  # warm up, not counted: first calls, and HAProxy's reloads at start
        asyncio.run(run_level(args.port, rounds[r], 2, 20, 30.0))
    for clients in args.levels:
        parts: dict[str, list[LevelResult]] = {r: [] for r in ROUTES}
        for _ in range(args.rounds):
            for r in ROUTES:
                got = asyncio.run(
                    run_level(
                        args.port,
                        rounds[r],
                        clients,
                        args.max_requests // args.rounds,
                        args.max_seconds / args.rounds,
                    )
                )
                parts[r].append(got)
        for r in ROUTES:
            merged = LevelResult(clients)
            for p in parts[r]:
                merged.requests += p.requests
                merged.texts += p.texts
                merged.errors += p.errors
                merged.wall_s += p.wall_s
                merged.latencies_ms += p.latencies_ms
                for k, v in p.statuses.items():
                    merged.statuses[k] = merged.statuses.get(k, 0) + v
            rows[r].append(merged.summary())
            print(f"  {r:13s} {clients:3d} clients: {rows[r][-1]['p50_ms']} ms p50", flush=True)
    return rows


def where_time_goes(args, texts: list[str]) -> dict[str, dict[str, float]]:
    """At one client: the client's latency of each graph beside its response parameters
    (medians over ``--probe-requests`` requests)."""
    import httpx

    out = {}
    with httpx.Client(base_url=f"http://{HOST}:{args.port}", timeout=60) as http:
        for graph in ("one", "enrich"):
            seen: dict[str, list[float]] = {"client_ms": []}
            for t in texts[: args.probe_requests]:
                start = time.perf_counter()
                r = http.post(
                    f"/v2/models/{graph}/infer",
                    content=v2_body(t),
                    headers={"content-type": "application/json"},
                )
                seen["client_ms"].append((time.perf_counter() - start) * 1000.0)
                r.raise_for_status()
                for k, v in r.json().get("parameters", {}).items():
                    if k == "graph_ms" or k.startswith("step_ms."):
                        seen.setdefault(k, []).append(float(v))
            med = {k: round(statistics.median(v), 3) for k, v in seen.items()}
            med["http_and_ingress_ms"] = round(med["client_ms"] - med["graph_ms"], 3)
            steps = [v for k, v in med.items() if k.startswith("step_ms.")]
            med["walk_ms"] = round(med["graph_ms"] - max(steps), 3)
            out[graph] = med
    return out


def markdown(results: dict) -> str:
    lines = [
        "# Inference graphs over HTTP",
        "",
        f"Machine: {results['config']['machine']['cpu']} ({os.cpu_count()} logical cores), "
        f"ingress {results['ingress']}, {results['config']['threads']} onnxruntime thread(s) "
        f"per model, one text per request; load average after: {results['loadavg_1m_after']:.2f}.",
        f"Models: the embedder `{Path(results['config']['model_dir']).name}`, the second "
        f"`{Path(results['config']['second_model_dir']).name}`.",
        "",
        "```",
    ]
    rows = []
    for r in ROUTES:
        for row in results["routes"][r]:
            rows.append(
                [
                    LABELS[r],
                    row["clients"],
                    row["p50_ms"],
                    row["p99_ms"],
                    row["requests_per_s"],
                    row["errors"],
                ]
            )
    lines.append(table(rows, ["route", "clients", "p50 ms", "p99 ms", "req/s", "errors"]))
    lines += ["```", "", "Where the time goes at one client (medians, ms):", "", "```"]
    keys = sorted({k for v in results["where"].values() for k in v})
    lines.append(
        table(
            [[g, *[v.get(k, "") for k in keys]] for g, v in results["where"].items()],
            ["graph", *keys],
        )
    )
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    args.model_dir = ensure_model_dir(args.model_dir)
    if args.second_model_dir is None:
        args.second_model_dir = ensure_recipe_dir(SECOND_RECIPE, DEFAULT_SECOND_DIR)
    elif not (Path(args.second_model_dir) / "textfleet.json").is_file():
        raise SystemExit(f"no exported model at {args.second_model_dir}")
    from textfleet.serve import deploy
    from textfleet.serve.config import GATEWAY_APP, parse_models
    from textfleet.serve.generate import serve_config

    texts = load_texts(args.pool)
    models = parse_models(models_yaml(args))
    started = time.time()
    ingress = deploy.start_ray(num_cpus=args.num_cpus, log_to_driver=False, ingress=args.ingress)
    try:
        deploy.apply(serve_config(models))
        states = deploy.wait([*models.app_names(), GATEWAY_APP], timeout_s=600)
        failed = {
            n: str(s.status.value) for n, s in states.items() if str(s.status.value) != "RUNNING"
        }
        if failed:
            raise SystemExit(f"applications not running: {failed}")
        results = {
            "config": {
                **{k: v for k, v in vars(args).items() if k != "out"},
                "machine": machine_info(),
            },
            "ingress": ingress,
            "routes": measure(args, texts),
            "where": where_time_goes(args, texts),
        }
    finally:
        deploy.stop()
    results["wall_s"] = round(time.time() - started, 1)
    results["loadavg_1m_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "graphs.json", args.out / "graphs.md"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2, default=str))
    md_path.write_text(markdown(results), encoding="utf-8")
    print(f"wrote {json_path}, {md_path}")
    return 0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="the embedder (default: MiniLM)")
    p.add_argument(
        "--second-model-dir",
        type=Path,
        default=None,
        help=f"the enrich graph's second model (default: {SECOND_RECIPE}, exported on first use)",
    )
    p.add_argument("--levels", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-requests", type=int, default=600, help="per route and level")
    p.add_argument("--max-seconds", type=float, default=20.0, help="per route and level")
    p.add_argument("--rounds", type=int, default=3, help="turns the routes take per level")
    p.add_argument("--probe-requests", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    p.add_argument("--num-cpus", type=int, default=None, help="Ray's CPUs (default: all)")
    p.add_argument("--pool", type=int, default=2000, help="texts drawn from the workload")
    p.add_argument("--port", type=int, default=18700)
    p.add_argument("--ingress", default="auto", choices=["auto", "haproxy", "ray-proxy"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
