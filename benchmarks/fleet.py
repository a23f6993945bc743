"""The cost of the Nth model: separate applications versus members of one pool.

In one run, on one machine and one Ray, with the same exported model copied
under N names (hard links: the runtime loads each as a model of its own):

1. standing memory and time to ready of N = ``--counts`` separately deployed
   models (one application, one replica each) and of the same N as members of one
   pool with ``--pool-replicas`` replicas, every member called once (loaded).
   Memory is summed over every Ray process and replica: RSS (shared pages counted
   in each process, as ``ps`` shows them) and PSS (shared pages split between the
   processes sharing them: what the machine really holds). The marginal memory of
   the Nth model is the difference between successive N over the difference in N;
2. the cold-load latency of a member: a pool holding 2 members per replica,
   called round robin over ``--cold-members`` members, so every call loads one;
3. a hot member next to the same model served alone: ``--clients`` closed-loop
   clients on ``/v2/models/<pool>/<id>/infer`` and on ``/v2/models/<alone>/infer``,
   taking turns, p50 and texts/s.

Writes benchmarks/results/fleet.{json,md,png}; MiniLM's figures came from
``--model-dir artifacts/models/all-MiniLM-L6-v2 --out fleet_minilm``. Tiny
settings for a smoke run:

    python -m benchmarks.fleet --counts 1,2 --pool-replicas 1 --cold-members 3 \\
        --cold-loads 6 --hot-requests 200 --hot-seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from benchmarks.common import (
    RESULTS,
    ensure_model_dir,
    ensure_recipe_dir,
    load_texts,
    machine_info,
    table,
    write_results,
)
from benchmarks.loadgen import Request, make_request, process_role, run_level

HOST = "127.0.0.1"
SMALL_MODEL_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "models" / "categorium"
POOL = "fleet"
LEAN = {"threads": 1, "ray_actor_options": {"num_cpus": 0}, "warmup": False}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="the model copied under N names (default: categorium, a 4 MB classifier, "
        "exported on first use: a pool is for many small models)",
    )
    p.add_argument("--counts", default="1,5,10,20", help="N: models deployed side by side")
    p.add_argument("--pool-replicas", default="1,2", help="replicas of the pool")
    p.add_argument("--cold-members", type=int, default=8)
    p.add_argument("--cold-loads", type=int, default=40)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--hot-requests", type=int, default=4000)
    p.add_argument("--hot-seconds", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=2, help="turns of the hot comparison")
    p.add_argument("--settle-s", type=float, default=5.0, help="wait before reading memory")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument(
        "--hot-only",
        action="store_true",
        help="only the hot member next to the model alone (writes <out>_hot.{json,md})",
    )
    p.add_argument("--out", default="fleet")
    args = p.parse_args(argv)
    args.counts = [int(x) for x in args.counts.split(",")]
    args.pool_replicas = [int(x) for x in args.pool_replicas.split(",")]
    return args


# ---------------------------------------------------------------- helpers


def member_copies(src: Path, root: Path, n: int) -> list[str]:
    """``n`` copies of the model directory under ``root`` (hard links where possible)."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    ids = [f"m{i:03d}" for i in range(n)]
    for member in ids:
        if not (root / member).exists():
            shutil.copytree(src, root / member, copy_function=link)
    return ids


def ray_memory() -> dict[str, float]:
    """Sum of RSS and PSS (MiB) over every process of this benchmark's Ray and Serve (the
    Ray started here runs as this process's descendants; other Rays on the machine don't
    count)."""
    rss = pss = 0
    procs = 0
    for p in psutil.Process(os.getpid()).children(recursive=True):
        if process_role(p) is None:
            continue
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        procs += 1
    mib = 1024 * 1024
    return {"rss_mib": round(rss / mib, 1), "pss_mib": round(pss / mib, 1), "processes": procs}


def v2_body(texts: list[str]) -> bytes:
    inp = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return orjson.dumps({"inputs": [inp]})


def post(port: int, path: str, body: bytes, timeout: float = 300.0) -> tuple[int, float]:
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(f"http://{HOST}:{port}{path}", content=body, timeout=timeout)
    return r.status_code, time.perf_counter() - t0


def deploy_models(entries: list[dict], port: int) -> float:
    """Apply these entries (and the gateway); seconds until every application RUNS."""
    from textfleet.serve import deploy
    from textfleet.serve.config import GATEWAY_APP, parse_models
    from textfleet.serve.generate import serve_config

    models = parse_models({"server": {"port": port}, "models": entries})
    t0 = time.perf_counter()
    deploy.apply(serve_config(models))
    states = deploy.wait([*models.app_names(), GATEWAY_APP], timeout_s=1800)
    took = time.perf_counter() - t0
    bad = {n: str(s.status.value) for n, s in states.items() if str(s.status.value) != "RUNNING"}
    if bad:
        raise RuntimeError(f"applications not running: {bad}")
    return took


def delete_all() -> None:
    from ray import serve

    for name in list(serve.status().applications):
        serve.delete(name)


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs or [float("nan")]) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
    }


# ---------------------------------------------------------------- the measurements


def standing(args, model_dir: Path, root: Path) -> tuple[list[dict], dict]:
    """Rows per layout and N, and the baseline: Ray and Serve up, no application."""
    rows: list[dict] = []
    baseline: dict | None = None
    one = v2_body(["a short text"])
    for n in args.counts:
        ids = member_copies(model_dir, root, n)
        entries = [{"name": f"sep-{m}", "model_dir": str(root / m), **LEAN} for m in ids]
        ready = deploy_models(entries, args.port)
        for m in ids:
            post(args.port, f"/v2/models/sep-{m}/infer", one)
        time.sleep(args.settle_s)
        rows.append({"layout": "separate", "n": n, "replicas": n, "ready_s": round(ready, 2),
                     **ray_memory()})  # fmt: skip
        print("  ", rows[-1], flush=True)
        delete_all()
        if baseline is None:
            time.sleep(args.settle_s)
            baseline = ray_memory()
            print("   baseline (Serve up, no application)", baseline, flush=True)
        for replicas in args.pool_replicas:
            pool = {"model_root": str(root), "max_models_per_replica": n}
            entry = {"name": POOL, "pool": pool, "num_replicas": replicas, **LEAN}
            ready = deploy_models([entry], args.port)
            t0 = time.perf_counter()
            for m in ids:  # every member loaded (on the replica Ray's proxy picks)
                post(args.port, f"/v2/models/{POOL}/{m}/infer", one)
            loaded = time.perf_counter() - t0
            time.sleep(args.settle_s)
            rows.append({"layout": f"pool x{replicas}", "n": n, "replicas": replicas,
                         "ready_s": round(ready, 2), "members_loaded_s": round(loaded, 2),
                         **ray_memory()})  # fmt: skip
            print("  ", rows[-1], flush=True)
            delete_all()
    for r in rows:
        r["above_baseline_pss_mib"] = round(r["pss_mib"] - baseline["pss_mib"], 1)
    return rows, baseline


def marginal(rows: list[dict]) -> dict[str, list[dict]]:
    """MiB per added model between successive N, per layout (PSS and RSS)."""
    out: dict[str, list[dict]] = {}
    for layout in dict.fromkeys(r["layout"] for r in rows):
        rs = sorted((r for r in rows if r["layout"] == layout), key=lambda r: r["n"])
        out[layout] = [
            {
                "from_n": a["n"],
                "to_n": b["n"],
                "pss_mib_per_model": round((b["pss_mib"] - a["pss_mib"]) / (b["n"] - a["n"]), 1),
                "rss_mib_per_model": round((b["rss_mib"] - a["rss_mib"]) / (b["n"] - a["n"]), 1),
            }
            for a, b in zip(rs, rs[1:], strict=False)
        ]
    return out


def member_cost_ratios(marginal_rows: dict[str, list[dict]]) -> dict[str, float]:
    """Each pool layout's marginal PSS over the separate layout's, step by step of N
    (``"pool x1 10->20": 0.39``)."""
    separate = {(x["from_n"], x["to_n"]): x["pss_mib_per_model"] for x in marginal_rows["separate"]}
    out = {}
    for layout, xs in marginal_rows.items():
        if layout == "separate":
            continue
        for x in xs:
            base = separate.get((x["from_n"], x["to_n"]))
            if base:
                out[f"{layout} {x['from_n']}->{x['to_n']}"] = round(
                    x["pss_mib_per_model"] / base, 2
                )
    return out


def cold_loads(args, model_dir: Path, root: Path) -> dict:
    ids = member_copies(model_dir, root, max(3, args.cold_members))
    pool = {"model_root": str(root), "max_models_per_replica": 2}
    deploy_models([{"name": POOL, "pool": pool, "num_replicas": 1, **LEAN}], args.port)
    one = v2_body(["a short text"])
    cold, warm = [], []
    for i in range(args.cold_loads):
        status, took = post(args.port, f"/v2/models/{POOL}/{ids[i % len(ids)]}/infer", one)
        if status == 200:
            cold.append(took)
        status, took = post(args.port, f"/v2/models/{POOL}/{ids[i % len(ids)]}/infer", one)
        if status == 200:
            warm.append(took)
    delete_all()
    return {"members": len(ids), "calls": args.cold_loads,
            "cold": percentiles(cold), "warm": percentiles(warm)}  # fmt: skip


def hot_member(args, model_dir: Path, root: Path) -> dict:
    ids = member_copies(model_dir, root, 1)
    pool = {"model_root": str(root), "max_models_per_replica": 4}
    entries = [
        {"name": POOL, "pool": pool, "num_replicas": 1, **LEAN},
        {"name": "alone", "model_dir": str(root / ids[0]), **LEAN},
    ]
    deploy_models(entries, args.port)
    texts = load_texts(2000)
    rng = np.random.default_rng(0)
    mix = [[texts[j] for j in rng.integers(0, len(texts), rng.integers(1, 5))] for _ in range(1000)]

    def requests(path: str) -> list[Request]:
        out = []
        for m in mix:
            body = v2_body(m)
            out.append(Request(make_request(HOST, args.port, "POST", path, body), body, len(m)))
        return out

    paths = {"pool member": f"/v2/models/{POOL}/{ids[0]}/infer", "alone": "/v2/models/alone/infer"}
    for path in paths.values():  # loaded and warm before the clock runs
        post(args.port, path, v2_body(["warm up"]))
    runs: dict[str, list[dict]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        for name, path in paths.items():
            level = asyncio.run(
                run_level(HOST, args.port, requests(path), args.clients, args.hot_requests,
                          args.hot_seconds)
            )  # fmt: skip
            runs[name].append(level.summary())
            print(f"   hot {name}: {runs[name][-1]}", flush=True)
    delete_all()
    best = {k: max(v, key=lambda s: s["texts_per_s"]) for k, v in runs.items()}
    alone = best["alone"]["p50_ms"]
    ratio = round(best["pool member"]["p50_ms"] / alone, 3) if alone else None
    per_round = [
        round(m["p50_ms"] / a["p50_ms"], 3)
        for m, a in zip(runs["pool member"], runs["alone"], strict=True)
    ]
    return {
        "clients": args.clients,
        "p50_ratio_per_round": per_round,
        "runs": runs,
        "best": best,
        "p50_ratio_member_over_alone": ratio,
    }


# ---------------------------------------------------------------- report


def markdown(result: dict) -> str:
    machine, base, rows = result["machine"], result["baseline"], result["standing"]
    standing_rows = [
        [r["layout"], r["n"], r["ready_s"], r.get("members_loaded_s", ""), r["rss_mib"],
         r["pss_mib"], r["above_baseline_pss_mib"]]
        for r in rows
    ]  # fmt: skip
    standing_head = ["layout", "N", "ready s", "members loaded s", "RSS MiB", "PSS MiB",
                     "PSS over Serve MiB"]  # fmt: skip
    margin_rows = [
        [layout, f"{x['from_n']}->{x['to_n']}", x["pss_mib_per_model"], x["rss_mib_per_model"]]
        for layout, xs in result["marginal"].items()
        for x in xs
    ]
    cold, hot = result["cold_loads"], result["hot"]
    model = result.get("model", {})
    ratios = member_cost_ratios(result["marginal"])
    return "\n".join(
        [
            "# Fleet: separate applications vs pool members",
            "",
            f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores. "
            f"Ray and Serve with no application: PSS {base['pss_mib']} MiB, "
            f"RSS {base['rss_mib']} MiB.",
            "",
            f"Model: `{model.get('name')}`, {model.get('onnx_mib')} MiB of ONNX weights, "
            "copied under N names (hard links; each loads as a model of its own).",
            "",
            "## Standing memory and time to ready",
            "",
            "```",
            table(standing_rows, standing_head),
            "```",
            "",
            "## Marginal memory of a model",
            "",
            "```",
            table(margin_rows, ["layout", "N", "PSS MiB/model", "RSS MiB/model"]),
            "```",
            "",
            "A pool member's marginal PSS over a separate model's, per step of N: "
            + ", ".join(f"{k} {v}" for k, v in ratios.items()),
            "",
            "## Cold load of a member",
            "",
            f"{cold['calls']} calls round robin over {cold['members']} members, 2 per replica: "
            f"cold p50 {cold['cold']['p50_ms']} ms, p99 {cold['cold']['p99_ms']} ms; "
            f"the same call warm p50 {cold['warm']['p50_ms']} ms.",
            "",
            hot_markdown(hot),
        ]
    )


def hot_markdown(hot: dict) -> str:
    rows = [
        [f"{name} (round {i + 1})", r["p50_ms"], r["p99_ms"], r["texts_per_s"]]
        for name, runs in hot["runs"].items()
        for i, r in enumerate(runs)
    ]
    return "\n".join(
        [
            f"## A hot member next to the model alone ({hot['clients']} clients, taking turns)",
            "",
            "```",
            table(rows, ["served as", "p50 ms", "p99 ms", "texts/s"]),
            "```",
            "",
            f"p50 member / alone, per round: {hot['p50_ratio_per_round']}; "
            f"of the rounds with the most texts/s: {hot['p50_ratio_member_over_alone']}",
            "",
        ]
    )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = result["standing"]
    for layout in dict.fromkeys(r["layout"] for r in rows):
        rs = sorted((r for r in rows if r["layout"] == layout), key=lambda r: r["n"])
        ax.plot([r["n"] for r in rs], [r["pss_mib"] for r in rs], marker="o", label=layout)
    ax.set_xlabel("models (N)")
    ax.set_ylabel("PSS of every Ray process, MiB")
    ax.set_title("Standing memory: separate applications vs one pool")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model_dir is None:
        model_dir = ensure_recipe_dir("categorium", SMALL_MODEL_DIR)
    else:
        model_dir = ensure_model_dir(args.model_dir)
    from textfleet.serve import deploy

    deploy.start_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(dir=model_dir.parent) as tmp:
            root = Path(tmp) / "members"
            root.mkdir()
            result: dict[str, Any] = {
                "machine": machine_info(),
                "model_dir": str(model_dir),
                "model": {
                    "name": model_dir.name,
                    "onnx_mib": round((model_dir / "model.onnx").stat().st_size / 2**20, 1),
                },
            }
            if not args.hot_only:
                rows, baseline = standing(args, model_dir, root)
                result.update(baseline=baseline, standing=rows, marginal=marginal(rows))
                print("cold loads", flush=True)
                result["cold_loads"] = cold_loads(args, model_dir, root)
            print("hot member", flush=True)
            result["hot"] = hot_member(args, model_dir, root)
    finally:
        deploy.stop()
    if args.hot_only:
        name = f"{args.out}_hot"
        path = write_results(name, result)
        machine = result["machine"]
        head = (
            f"# Fleet: a hot pool member next to the model alone\n\nMachine: {machine['cpu']}, "
            f"{machine['logical_cores']} logical cores. Model: `{model_dir.name}`.\n\n"
        )
        (RESULTS / f"{name}.md").write_text(head + hot_markdown(result["hot"]), encoding="utf-8")
        print(f"wrote {path} (.md)")
        return 0
    path = write_results(args.out, result)
    (RESULTS / f"{args.out}.md").write_text(markdown(result), encoding="utf-8")
    plot(result, RESULTS / f"{args.out}.png")
    print(f"wrote {path} (.md, .png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
