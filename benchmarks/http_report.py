"""JSON, Markdown and PNG reports of benchmarks/http_load.py."""

from __future__ import annotations

import json
from pathlib import Path

SYSTEMS = (
    "fastapi",
    "ray-batch",
    "textfleet",
    "textfleet-ray-proxy",
    "textfleet-versions",
    "textfleet-shadow",
)
LABELS = {
    "fastapi": "FastAPI + uvicorn wrapper",
    "ray-batch": "Ray Serve @serve.batch (hand-written, Ray's defaults)",
    "textfleet": "textfleet (V2 infer, as `textfleet serve` runs it)",
    "textfleet-ray-proxy": "textfleet through Ray Serve's Python proxy",
    "textfleet-versions": "textfleet, two versions 50/50 behind the model's router",
    "textfleet-shadow": "textfleet, two versions 50/50 and a 100% shadow",
}


def write_reports(results: dict, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    png = out.with_suffix(".png")
    if plot(results, png):
        paths.append(png)
    return paths


def _row(results: dict, system: str, clients: int) -> dict | None:
    for row in results["systems"].get(system, []):
        if row["clients"] == clients:
            return row
    return None


def markdown(results: dict) -> str:
    cfg = results["config"]
    offline = results["offline_limit"]["texts_per_s"]
    lines = [
        "# HTTP load on loopback",
        "",
        f"Model `{Path(cfg['model_dir']).name}`, onnxruntime threads {cfg['threads']} "
        + _split(cfg)
        + ", "
        f"{cfg['cpus']} CPUs shared by servers and load generator; {cfg['texts_per_request']} "
        f"texts per request; each level bounded to {cfg['max_requests']} requests or "
        f"{cfg['max_seconds']:.0f} s. extra Ray env: {cfg['ray_env'] or 'none'}. "
        f"Load average (1 min) before / after: {cfg['machine']['loadavg_1m']:.1f} / "
        f"{results.get('loadavg_1m_after', float('nan')):.1f} (other work on the machine "
        "makes absolute numbers noisy; compare systems within one run).",
        "",
        "HTTP ingress: "
        + (", ".join(f"{k} {v}" for k, v in results.get("ingress", {}).items()) or "not recorded")
        + ". Each Ray system runs in its own process with a fresh Ray.",
        "",
        f"Offline compute limit (tokenized ahead, length-sorted batches of 32): "
        f"**{offline:.1f} texts/s** ({results['offline_limit']['texts']} texts"
        + _bracket(results["offline_limit"])
        + ").",
        "",
        "| system | clients | texts/s | x offline | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system in SYSTEMS:
        for row in results["systems"].get(system, []):
            lines.append(
                f"| {LABELS[system]} | {row['clients']} | {row['texts_per_s']:.1f} | "
                f"{row['texts_per_s'] / offline:.2f} | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | {row['errors']} |"
            )
    lines += shadow_section(results)
    lines += ["", *targets(results), *routes_section(results), "", "## Where the time goes", ""]
    lines += ["Fixed cost of each HTTP path (p50 of one client, sequential):", ""]
    lines += ["| route | p50 ms |", "|---|---:|"]
    for name, ms in results["probes_p50_ms"].items():
        lines.append(f"| {name} | {ms:.2f} |")
    lines += [
        "",
        "Routes that do no model work, 16 clients: the HTTP path's own capacity and CPU:",
        "",
        "| route | requests/s | p50 ms | p99 ms | CPU ms per request, by process |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in results.get("overhead_16_clients", {}).items():
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_request"].items() if v >= 0.1)
        lines.append(
            f"| {name} | {row['requests_per_s']:.0f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {cpu} |"
        )
    top = max(cfg["levels"])
    lines += [
        "",
        f"CPU per request (ms) and busy share (% of one core) by process, at {top} clients:",
        "",
    ]
    for system in SYSTEMS:
        row = _row(results, system, top)
        if row:
            parts = ", ".join(
                f"{k} {v:.2f} ms ({row['cpu_percent'][k]:.0f}%)"
                for k, v in row["cpu_ms_per_request"].items()
            )
            lines.append(f"- {LABELS[system]}: {parts}")
    return "\n".join(lines) + "\n"


def shadow_section(results: dict) -> list[str]:
    """What the 100% shadow did with its mirrors at each level: answered, failed, or
    dropped (past ``max_in_flight``, or past its own deadline or queue bound: the
    shadow runs in the CPU the primary leaves)."""
    rows = [r for r in results["systems"].get("textfleet-shadow", []) if "shadow_mirrors" in r]
    if not rows:
        return []
    out = ["", "The shadow's mirrors per level (100% of the primary's requests mirrored):", ""]
    out += ["| clients | requests | answered | failed | dropped |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["shadow_mirrors"]
        out.append(
            f"| {r['clients']} | {r['requests']} | {m['ok']} | {m['errors']} | {m['dropped']} |"
        )
    return out


def _split(cfg: dict) -> str:
    """How textfleet spends the same threads."""
    workers = cfg.get("textfleet_workers")
    if not workers or workers == 1:
        return "(all systems)"
    return (
        f"(textfleet: {workers} batches side by side, {max(1, cfg['threads'] // workers)} "
        "thread each)"
    )


def _bracket(limit: dict) -> str:
    """'; 80.1 before the servers, 84.3 after' when both were measured."""
    if "before" not in limit:
        return ""
    b, a = limit["before"]["texts_per_s"], limit["after"]["texts_per_s"]
    return f"; mean of {b:.1f} before the servers and {a:.1f} after"


def targets(results: dict) -> list[str]:
    """The issue's targets, as measured ratios (no pass/fail: numbers vary per machine)."""
    top = max(results["config"]["levels"])
    tf, fa, rb = (_row(results, s, top) for s in ("textfleet", "fastapi", "ray-batch"))
    low_tf, low_fa = _row(results, "textfleet", 1), _row(results, "fastapi", 1)
    out = [f"Ratios at {top} clients:"]
    for name, peer in (("FastAPI", fa), ("Ray batch", rb)):
        if tf and peer:
            out.append(
                f"- textfleet / {name}: throughput {tf['texts_per_s'] / peer['texts_per_s']:.2f}x, "
                f"p99 {tf['p99_ms'] / peer['p99_ms']:.2f}x"
            )
    if tf:
        offline = results["offline_limit"]["texts_per_s"]
        out.append(f"- textfleet / offline limit: {tf['texts_per_s'] / offline:.2f}")
    if low_tf and low_fa:
        out.append(
            f"- p50 at 1 client: textfleet {low_tf['p50_ms']:.1f} ms vs FastAPI "
            f"{low_fa['p50_ms']:.1f} ms ({low_tf['p50_ms'] - low_fa['p50_ms']:+.1f} ms)"
        )
    for system in ("textfleet-versions", "textfleet-shadow"):
        top_v, low_v = _row(results, system, top), _row(results, system, 1)
        if tf and top_v:
            out.append(
                f"- {system} / textfleet unversioned: throughput at {top} clients "
                f"{top_v['texts_per_s'] / tf['texts_per_s']:.2f}x"
            )
        if low_tf and low_v:
            out.append(
                f"- {system}: p50 at 1 client {low_v['p50_ms']:.1f} ms "
                f"({low_v['p50_ms'] - low_tf['p50_ms']:+.1f} ms vs unversioned)"
            )
    return out


def routes_section(results: dict) -> list[str]:
    """textfleet's routes side by side (benchmarks/http_routes.py), per system."""
    from benchmarks.http_routes import LABELS as ROUTE_LABELS

    routes = results.get("routes") or {}
    if not routes:
        return []
    cfg = results["config"]
    out = [
        "",
        "## Routes side by side",
        "",
        "The same request mix on textfleet's other routes, on the same server; the routes "
        f"take turns ({cfg.get('route_rounds', 1)} rounds per level, each route at most "
        f"{cfg.get('route_max_requests')} requests or {cfg.get('route_max_seconds')} s per "
        "level in all). Reranker: "
        f"`{Path(cfg.get('rerank_model_dir', '')).name}`, the request's texts as documents.",
        "",
        "| system | route | clients | texts/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for system, by_route in routes.items():
        for route, rows in by_route.items():
            for row in rows:
                out.append(
                    f"| {system} | {ROUTE_LABELS.get(route, route)} | {row['clients']} | "
                    f"{row['texts_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                    f"{row['errors']} |"
                )
    out += ["", "Against V2 on the same server:", ""]
    for system, by_route in routes.items():
        for route, base in (
            ("openai", "v2"),
            ("openai-model", "v2"),
            ("rerank", "v2-pairs"),
            ("rerank-model", "v2-pairs"),
        ):
            if route not in by_route or base not in by_route:
                continue
            pairs = zip(by_route[route], by_route[base], strict=True)
            parts = [
                f"{r['clients']} client{'s' * (r['clients'] > 1)}: p50 "
                f"{r['p50_ms'] - b['p50_ms']:+.1f} ms, texts/s "
                f"{r['texts_per_s'] / b['texts_per_s']:.2f}x"
                for r, b in pairs
                if b["texts_per_s"]
            ]
            out.append(
                f"- {system}, {ROUTE_LABELS[route]} vs {ROUTE_LABELS[base]}: " + "; ".join(parts)
            )
    return out


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for system in SYSTEMS:
        rows = results["systems"].get(system)
        if not rows:
            continue
        x = [r["clients"] for r in rows]
        ax1.plot(x, [r["texts_per_s"] for r in rows], marker="o", label=LABELS[system])
        ax2.plot(x, [r["p99_ms"] for r in rows], marker="o", label=LABELS[system])
    ax1.axhline(results["offline_limit"]["texts_per_s"], ls="--", c="grey", label="offline limit")
    for ax, title in ((ax1, "throughput (texts/s)"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
