"""Closed-loop V2 infer over gRPC and over HTTP on one textfleet server, side by side.

One ``textfleet`` server (a local Ray, the ingress ``textfleet serve`` would
pick) serving the default model with its HTTP port and its V2 gRPC port; the
same requests (1-4 texts drawn from the workload, as benchmarks/http_load.py
sends) go as V2 JSON over HTTP/1.1 keep-alive (benchmarks/loadgen.py) and as
``ModelInferRequest`` protos with raw BYTES contents over gRPC (one channel
per client, requests serialized ahead, no client library on the hot path), at
each ``--levels`` client count; the two protocols take turns ``--rounds``
times per level. Before measuring, one request over each must give the same
embeddings. CPU per request is counted per process role, as in http_load.

Writes benchmarks/results/grpc_load.{json,md}.

    python -m benchmarks.grpc_load [--model-dir artifacts/models/all-MiniLM-L6-v2]
    python -m benchmarks.grpc_load --levels 1,2 --max-requests 20 --max-seconds 2  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.common import RESULTS, ROOT, ensure_model_dir, load_texts, machine_info
from benchmarks.http_load import HOST, MODEL, request_mix, v2_requests
from benchmarks.loadgen import LevelResult, cpu_by_role, cpu_snapshot, run_level

INFER = "/inference.GRPCInferenceService/ModelInfer"
METADATA = (("application", MODEL),)


def grpc_requests(mix: list[list[str]]) -> list[tuple[bytes, int]]:
    """(serialized ModelInferRequest, number of texts) per request of the mix."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.utils import serialize_byte_tensor

    out = []
    for texts in mix:
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[len(texts)]
        )
        raw = serialize_byte_tensor(np.array(texts, dtype=object)).item()
        req = pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[raw])
        out.append((req.SerializeToString(), len(texts)))
    return out


async def run_grpc_level(
    port: int, requests: list[tuple[bytes, int]], clients: int, max_requests: int, max_s: float
) -> LevelResult:
    """``clients`` closed loops of ModelInfer calls, each on its own channel."""
    import grpc

    result = LevelResult(clients)
    next_index = [0]
    start = time.perf_counter()
    deadline = start + max_s
    channels = [grpc.aio.insecure_channel(f"{HOST}:{port}") for _ in range(clients)]

    async def client(channel) -> None:
        call = channel.unary_unary(INFER)  # bytes in, bytes out: serialized ahead
        while time.perf_counter() < deadline and next_index[0] < max_requests:
            body, n = requests[next_index[0] % len(requests)]
            next_index[0] += 1
            t0 = time.perf_counter()
            try:
                await call(body, metadata=METADATA, timeout=120)
                status = "OK"
            except grpc.aio.AioRpcError as e:
                status = e.code().name
            result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.requests += 1
            if status == "OK":
                result.texts += n
            else:
                result.errors += 1

    try:
        await asyncio.gather(*(client(c) for c in channels))
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    result.wall_s = time.perf_counter() - start
    return result


def measure(protocol: str, args, http_reqs, grpc_reqs, clients: int) -> dict:
    before = cpu_snapshot(os.getpid())
    if protocol == "http":
        run = run_level(HOST, args.port, http_reqs, clients, args.max_requests, args.max_seconds)
    else:
        run = run_grpc_level(
            args.grpc_port, grpc_reqs, clients, args.max_requests, args.max_seconds
        )
    res = asyncio.run(run)
    spent = cpu_by_role(before, cpu_snapshot(os.getpid()))
    row = res.summary() | {"protocol": protocol}
    busy = sorted(((r, s) for r, s in spent.items() if s > 0.01), key=lambda kv: -kv[1])
    row["cpu_ms_per_request"] = {r: round(1000.0 * s / max(res.requests, 1), 2) for r, s in busy}
    print(
        f"  {protocol:5s} {clients:3d} clients: {row['texts_per_s']:7.1f} texts/s  "
        f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:8.1f} ms  errors {row['errors']}",
        flush=True,
    )
    return row


def same_answer(args, mix) -> None:
    """One request over each protocol: the same embeddings, or the run stops."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    texts = np.array(mix[0], dtype=object)
    with grpcclient.InferenceServerClient(f"{HOST}:{args.grpc_port}") as g:
        inp = grpcclient.InferInput("text", [len(texts)], "BYTES").set_data_from_numpy(texts)
        over_grpc = g.infer(MODEL, [inp], headers=dict(METADATA)).as_numpy("embedding")
    with httpclient.InferenceServerClient(f"{HOST}:{args.port}") as h:
        inp = httpclient.InferInput("text", [len(texts)], "BYTES").set_data_from_numpy(texts)
        over_http = h.infer(MODEL, [inp]).as_numpy("embedding")
    np.testing.assert_allclose(over_grpc, over_http, rtol=1e-5, atol=1e-6)


def serve(args) -> str:
    """Start a local Ray and deploy the model; returns the HTTP ingress in use."""
    from textfleet.serve import deploy
    from textfleet.serve.config import GATEWAY_APP, parse_models
    from textfleet.serve.generate import serve_config

    ingress = deploy.start_ray(num_cpus=os.cpu_count(), ingress=args.ingress, log_to_driver=False)
    entry = {
        "name": MODEL,
        "model_dir": str(args.model_dir),
        "threads": args.threads,
        "ray_actor_options": {"num_cpus": 0},
    }
    server = {"port": args.port, "grpc_port": args.grpc_port, "ingress": args.ingress}
    models = parse_models({"server": server, "models": [entry]})
    deploy.apply(serve_config(models))
    states = deploy.wait([MODEL, GATEWAY_APP], timeout_s=600)
    bad = {n: str(s.status.value) for n, s in states.items() if str(s.status.value) != "RUNNING"}
    if bad:
        raise RuntimeError(f"not running: {bad}")
    return ingress


def main() -> int:
    args = parse_args()
    args.model_dir = ensure_model_dir(args.model_dir)
    mix = request_mix(load_texts(args.pool), max(args.max_requests, 1))
    http_reqs, grpc_reqs = v2_requests(mix, args.port), grpc_requests(mix)
    from textfleet.serve import deploy

    try:
        ingress = serve(args)
        print(f"textfleet ({ingress} HTTP ingress), model {args.model_dir}", flush=True)
        same_answer(args, mix)
        for protocol in ("http", "grpc"):  # warm up both paths
            measure(protocol, args, http_reqs, grpc_reqs, 4)
        rows = [
            measure(protocol, args, http_reqs, grpc_reqs, clients)
            for clients in args.levels
            for _ in range(args.rounds)
            for protocol in ("http", "grpc")
        ]
    finally:
        deploy.stop()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"config": config | {"ingress": ingress}, "machine": machine_info(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    args.out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


def shown_path(path: str) -> str:
    """A path under the repository as a relative one: results name no machine's paths."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def markdown(report: dict) -> str:
    lines = [
        "# V2 infer over gRPC vs HTTP, one textfleet server",
        "",
        f"HTTP ingress: {report['config']['ingress']}; "
        f"model {shown_path(report['config']['model_dir'])}; "
        "1-4 texts per request.",
        "",
        "| protocol | clients | texts/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['protocol']} | {r['clients']} | {r['texts_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--levels", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rounds", type=int, default=2, help="turns each protocol takes per level")
    p.add_argument("--max-requests", type=int, default=1500, help="per level and turn")
    p.add_argument("--max-seconds", type=float, default=20.0, help="per level and turn")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the model")
    p.add_argument("--pool", type=int, default=5000, help="texts drawn from the workload")
    p.add_argument("--port", type=int, default=18610)
    p.add_argument("--grpc-port", type=int, default=18611)
    p.add_argument("--ingress", default="auto", choices=["auto", "haproxy", "ray-proxy"])
    p.add_argument("--out", type=Path, default=RESULTS / "grpc_load")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
