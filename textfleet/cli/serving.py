"""``textfleet config``, ``textfleet serve`` and ``textfleet status``.

The ``textfleet`` entry point (textfleet/cli/__init__.py) adds these with one
call, ``add_subcommands(subparsers)``; each subcommand sets ``func``
(``args -> exit code``) on its parser.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from textfleet.serve.config import (
    DEPLOYMENT_NAME,
    GATEWAY_APP,
    POOL_DEPLOYMENT,
    VERSION_DEPLOYMENT,
    ConfigError,
    load_models,
    version_app,
)
from textfleet.serve.network import LOOPBACK

DEFAULT_MODELS = "models/models.yaml"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="write a Ray Serve config file (one application per model) from models.yaml",
    )
    p.add_argument("models_yaml", help="path of the models.yaml")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument(
        "--target",
        choices=("local", "cluster", "kuberay"),
        default="local",
        help="local: this machine (default); cluster: any node of a Ray cluster "
        "(`serve deploy`); kuberay: a KubeRay RayService manifest",
    )
    p.add_argument("--host", help="HTTP listen address (default: models.yaml's, 127.0.0.1)")
    p.add_argument("--image", help="kuberay: image of the Ray containers (required)")
    p.add_argument("--name", default="textfleet", help="kuberay: RayService name")
    p.add_argument(
        "--worker-cpus", type=int, default=4, help="kuberay: CPUs per pod of the workers group"
    )
    p.set_defaults(func=cmd_config)

    p = subparsers.add_parser(
        "pack", help="zip a model directory for model_uri and print its model_sha256 pin"
    )
    p.add_argument("model_dir", help="directory written by `textfleet export`")
    p.add_argument("-o", "--output", required=True, help="the .zip to write")
    p.set_defaults(func=cmd_pack)

    p = subparsers.add_parser(
        "serve", help="start a local Ray, deploy every model of models.yaml, block until Ctrl-C"
    )
    p.add_argument("models_yaml", nargs="?", default=DEFAULT_MODELS)
    p.add_argument("--host", help="listen address (default: models.yaml's, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: models.yaml's, 8000)")
    p.add_argument("--grpc-port", type=int, help="V2 gRPC port (default: models.yaml's, 9000)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port of Ray's metrics agent")
    p.add_argument("--num-cpus", type=int, help="CPUs Ray may schedule (default: all)")
    p.add_argument(
        "--address",
        help="deploy onto this running Ray cluster (HEAD:PORT) instead of starting a local "
        "Ray; returns once the models are up, leaving them running",
    )
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "status", help="status of the served models on a running Ray (like `serve status`)"
    )
    p.add_argument("--address", default="auto", help="Ray address (default: auto)")
    p.set_defaults(func=cmd_status)


def cmd_config(args: argparse.Namespace) -> int:
    from textfleet.serve import cluster, kuberay
    from textfleet.serve.generate import dump, missing_model_dirs, serve_config

    try:
        models = load_models(args.models_yaml)
        if args.host is not None:
            server = models.server.model_copy(update={"host": args.host})
            models = models.model_copy(update={"server": server})
        if args.target == "local":
            for warning in missing_model_dirs(models):
                print(f"warning: {warning}", file=sys.stderr)
            text = dump(serve_config(models), args.models_yaml)
        else:
            source = cluster.source_name(args.models_yaml)
            if args.target == "cluster":
                config = cluster.cluster_serve_config(models, source)
                text = cluster.header(models, source) + dump(config, source).split("\n", 2)[2]
            else:
                if not args.image:
                    print("error: --target kuberay needs --image", file=sys.stderr)
                    return 2
                manifest = kuberay.rayservice(
                    models, args.image, args.name, args.worker_cpus, source
                )
                text = kuberay.dump(manifest, source)
            if cluster.is_loopback(models.server.host):
                print(
                    f"note: proxies will listen on {models.server.host} only; "
                    "use --host 0.0.0.0 (or server.host) to take traffic from other machines",
                    file=sys.stderr,
                )
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: {len(models.models)} model(s) + gateway", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from textfleet.serve.model_source import pack

    if not args.output.endswith(".zip"):
        print("error: --output must end in .zip (Ray unpacks only zips)", file=sys.stderr)
        return 2
    try:
        pin = pack(args.model_dir, args.output)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}; upload it and point model_uri at it, with", file=sys.stderr)
    print(f"model_sha256: {pin}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.address:
        return serve_on_cluster(args)
    # Token authentication on Ray's ports (Ray's default for a new local Ray, which
    # warns that it chose it). Read when ray is imported, hence before.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from textfleet.serve import deploy
    from textfleet.serve.generate import missing_model_dirs, serve_config

    try:
        models = load_models(args.models_yaml)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    models = _with_overrides(models, args)
    server = models.server
    for warning in missing_model_dirs(models):
        print(f"warning: {warning}", file=sys.stderr)

    try:
        ingress = deploy.start_ray(
            metrics_export_port=server.metrics_export_port,
            num_cpus=args.num_cpus,
            ingress=server.ingress,
            host=server.host,
            replica_connections=server.replica_connections,
        )
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_request = ingress == "haproxy" and server.replica_connections == "per_request"
    connections = ", a connection per request to the replicas" if per_request else ""
    print(f"ingress: {ingress}{connections}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        deploy.apply(serve_config(models))
        states = deploy.wait([*models.app_names(), GATEWAY_APP], timeout_s=600)
        _print_urls(server, states, models)
        _print_listeners(server, deploy.running_ingress())
        print("Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down ...", file=sys.stderr)
    finally:
        deploy.stop()
    return 0


def serve_on_cluster(args: argparse.Namespace) -> int:
    """Deploy onto the running cluster at ``args.address``; no local Ray, no blocking."""
    from textfleet.serve import attach, cluster, deploy, ingress_policy

    if args.num_cpus is not None:
        print("error: --num-cpus is for a local Ray; a cluster has its own", file=sys.stderr)
        return 2
    try:
        models = _with_overrides(load_models(args.models_yaml), args)
        config = cluster.cluster_serve_config(models, cluster.source_name(args.models_yaml))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    # Our front-door policy (serve/ingress_policy.py) reaches the proxies when this
    # driver is the one that starts Serve on the cluster (they inherit its hook).
    deploy.connect(
        args.address, runtime_env={"worker_process_setup_hook": ingress_policy.CLUSTER_SETUP_HOOK}
    )
    server = models.server
    differences = attach.ingress_differences(
        server,
        attach.node_settings(),
        attach.serve_http_options(),
        config["http_options"]["request_timeout_s"],
    )
    for line in differences:
        print(f"warning: the cluster differs from models.yaml: {line}", file=sys.stderr)
    deploy.apply(config)
    states = deploy.wait([*models.app_names(), GATEWAY_APP], timeout_s=600)
    running = attach.serve_http_options() or {"host": server.host, "port": server.port}
    shown = server.model_copy(update={"host": running["host"], "port": running["port"]})
    print(
        f"deployed onto {args.address} (ingress: {cluster.cluster_ingress(server)}; "
        f"a proxy on every node at port {shown.port})",
        file=sys.stderr,
    )
    _print_urls(shown, states, models)
    failed = [n for n, a in states.items() if str(a.status.value) != "RUNNING"]
    return 1 if failed else 0


def _with_overrides(models, args: argparse.Namespace):
    """models.yaml with the command line's --host, --port, --grpc-port and --metrics-port."""
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "grpc_port": args.grpc_port,
            "metrics_export_port": args.metrics_port,
        }.items()
        if v is not None
    }
    server = models.server.model_copy(update=overrides)
    return models.model_copy(update={"server": server})


def _interrupt(signum, frame) -> None:
    """SIGTERM shuts down as cleanly as Ctrl-C."""
    raise KeyboardInterrupt


def _print_urls(server, states, models) -> None:
    base = f"http://{server.host}:{server.port}"
    routes = {n: f"/v2/models/{n}" for n in models.names()}
    for m in models.models:  # a version of a versioned model: its own route
        if m.pool is not None:  # a pool's members: one route each
            routes[m.name] = f"/v2/models/{m.name}/<id>"
        for v in m.version_configs():
            routes[version_app(m.name, v.version)] = f"/v2/models/{m.name}/versions/{v.version}"
    for name, app in states.items():
        if name == GATEWAY_APP:
            continue
        state = str(app.status.value)
        print(f"  {name}: {state}  {base}{routes.get(name, f'/v2/models/{name}')}/infer")
        if state != "RUNNING":
            deps = app.deployments
            dep = next((deps[d] for d in (DEPLOYMENT_NAME, VERSION_DEPLOYMENT, POOL_DEPLOYMENT)
                        if d in deps), None)  # fmt: skip
            message = (dep.message if dep is not None and dep.message else app.message) or ""
            lines = message.strip().splitlines()
            print(f"    {lines[-1] if lines else 'no message'}")
    print(f"  health:  {base}/v2/health/ready")
    print(f"  openai:  {base}/v1/embeddings")
    if server.grpc_port is not None:
        print(
            f"  grpc:    {grpc_address(server.host, server.grpc_port)}  (V2 gRPC; metadata "
            "application: <model name>)"
        )
    print(f"  metrics: http://{LOOPBACK}:{server.metrics_export_port}/metrics")


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _print_listeners(server, ingress: str) -> None:
    """Every address the server's processes listen on, read from the sockets."""
    from textfleet.serve.network import HAPROXY_PORT_ENV, listeners

    roles = {
        server.port: f"HTTP ({ingress})",
        server.metrics_export_port: "Prometheus metrics (Ray's metrics agent)",
    }
    if server.grpc_port is not None:
        roles[server.grpc_port] = f"V2 gRPC ({ingress})"
    from ray.serve._private import constants as c

    if ingress == "haproxy":  # ports picked when Ray started (serve/network.py, haproxy_env)
        stats, metrics, fallback, grpc_fallback = (int(os.environ[k]) for k in HAPROXY_PORT_ENV)
        roles[stats] = "HAProxy stats page"
        roles[metrics] = "HAProxy Prometheus page"
        roles[fallback] = "Ray Serve's proxy (HAProxy's fallback)"
        roles[grpc_fallback] = "Ray Serve's gRPC proxy (HAProxy's fallback)"
    direct = range(
        c.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, c.RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT
    )
    direct_grpc = range(
        c.RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT, c.RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT
    )
    ray_own: dict[str, list[int]] = {}
    print("  listening:")
    for sock in listeners(os.getpid(), expect_port=server.port):
        if sock.port in roles:
            print(f"    {sock.address:<22} {roles[sock.port]}")
        elif sock.process.startswith("ray::ServeReplica") and sock.port in direct:
            print(f"    {sock.address:<22} direct ingress of {sock.process[5:]}")
        elif sock.process.startswith("ray::ServeReplica") and sock.port in direct_grpc:
            print(f"    {sock.address:<22} direct gRPC ingress of {sock.process[5:]}")
        else:
            ray_own.setdefault(sock.host, []).append(sock.port)
    for host, ports in ray_own.items():
        print(f"    {host}: Ray's own ports (GCS, raylet, agents, workers): {sorted(ports)}")


def cmd_status(args: argparse.Namespace) -> int:
    from textfleet.serve.deploy import connect, status_text

    connect(args.address)
    print(status_text())
    return 0
