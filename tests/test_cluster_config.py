"""Configs for a Ray cluster and KubeRay: `textfleet config --target cluster|kuberay`.

Everything here is checked against Ray's own schema (``ServeDeploySchema``,
``AutoscalingConfig``) and without a running Ray; tests/test_cluster.py
deploys onto a real two-node cluster.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from textfleet.serve import attach, cluster, kuberay, model_source
from textfleet.serve.config import GATEWAY_APP, ConfigError, ServerConfig, load_models
from textfleet.serve.generate import serve_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "configs" / "cluster" / "models.yaml"
GOOD = sorted((REPO / "tests" / "configs" / "good").glob("*.yaml"))


def textfleet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-P", "-m", "textfleet.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def machine_paths(*extra: Path) -> list[str]:
    """Paths of this machine that a cluster config must not contain."""
    return [str(p) for p in (REPO, Path.home(), Path.cwd(), *extra)]


def test_readme_shows_the_tested_cluster_example():
    readme = (REPO / "serve" / "README.md").read_text()
    body = EXAMPLE.read_text().split("\n", 2)[2]  # without the two comment lines on top
    assert body in readme


def test_cluster_config_holds_no_path_of_this_machine(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "models.yaml")
    out = textfleet("config", str(folder / "models.yaml"), "--target", "cluster", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for path in machine_paths(tmp_path):
        assert path not in out.stdout
    config = yaml.safe_load(out.stdout)
    schema = ServeDeploySchema.model_validate(config)  # as `serve deploy` reads it
    assert schema.proxy_location.value == "EveryNode"
    assert config["http_options"]["host"] == "0.0.0.0"  # as the yaml asks, nothing more
    apps = {a["name"]: a for a in config["applications"]}
    minilm = apps["all-MiniLM-L6-v2"]
    assert minilm["runtime_env"] == {"working_dir": "s3://my-bucket/models/all-MiniLM-L6-v2-1.zip"}
    assert minilm["args"]["model_dir"] == "."  # inside the unpacked archive
    assert apps["categorium"]["args"]["model_dir"] == "/mnt/models/categorium"
    assert "runtime_env" not in apps["categorium"] and "runtime_env" not in apps[GATEWAY_APP]
    # The ray start lines for every node are in the header.
    assert "ray start --head" in out.stdout and "--metrics-export-port=8080" in out.stdout


def test_loopback_stays_loopback_unless_asked(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    del data["server"]["host"]
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    out = textfleet("config", str(path), "--target", "cluster")
    assert yaml.safe_load(out.stdout)["http_options"]["host"] == "127.0.0.1"
    assert "--host 0.0.0.0" in out.stderr  # says how to expose it
    out = textfleet("config", str(path), "--target", "cluster", "--host", "0.0.0.0")
    assert yaml.safe_load(out.stdout)["http_options"]["host"] == "0.0.0.0"


def test_a_path_of_this_machine_is_refused_for_a_cluster(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: here, model_dir: ./m}\n")
    out = textfleet("config", str(path), "--target", "cluster")
    assert out.returncode == 2
    assert "model 'here': model_dir" in out.stderr
    assert "model_uri" in out.stderr and "model_dir_shared: true" in out.stderr
    with pytest.raises(ConfigError, match="not deployable on a cluster"):
        cluster.cluster_serve_config(load_models(path))


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_local_target_is_unchanged(path, tmp_path):
    out = textfleet("config", str(path))
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert config == serve_config(load_models(path))
    assert set(config) == {"http_options", "grpc_options", "logging_config", "applications"}
    assert set(config["http_options"]) == {"host", "port"}


def test_cluster_proxies_answer_before_a_request_waits_forever():
    models = load_models(EXAMPLE)
    config = cluster.cluster_serve_config(models)
    longest = max(m.request_timeout_s for m in models.models)
    assert config["http_options"]["request_timeout_s"] == longest + cluster.PROXY_MARGIN_S


def test_placement_options_pass_through_to_ray():
    models = load_models(EXAMPLE)
    schema = ServeDeploySchema.model_validate(cluster.cluster_serve_config(models))
    minilm, categorium = (a.deployments[0] for a in schema.applications[:2])
    assert minilm.max_replicas_per_node == 1
    assert categorium.ray_actor_options.resources == {"big_memory": 1.0}
    # Not in the builder's args: changing placement is a light update, not a rebuild.
    args = models.model("all-MiniLM-L6-v2").builder_args()
    assert "max_replicas_per_node" not in args and "ray_actor_options" not in args


def test_documented_autoscaling_is_rays_autoscaling_config():
    models = load_models(EXAMPLE)
    config = cluster.cluster_serve_config(models)
    deployment = config["applications"][0]["deployments"][0]
    assert "num_replicas" not in deployment
    scaling = AutoscalingConfig.model_validate(deployment["autoscaling_config"])
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    assert scaling.target_ongoing_requests == 32
    assert scaling.upscale_delay_s == 5 and scaling.downscale_delay_s == 60


def test_node_env_is_what_the_ingress_needs():
    ray_proxy = cluster.node_env(ServerConfig())
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in ray_proxy  # auto picks ray-proxy on a cluster
    assert ray_proxy["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    # Calls between deployments by gRPC, with room for any body a model accepts.
    assert ray_proxy["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
    assert ray_proxy["RAY_SERVE_PROXY_USE_GRPC"] == "0"
    assert int(ray_proxy["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) > 64 * 2**20
    haproxy = cluster.node_env(ServerConfig(ingress="haproxy"))
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert haproxy["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"]  # our front-door timeouts
    assert "TEXTFLEET_HTTP_HOST" not in haproxy  # a local server's setting only
    assert "TEXTFLEET_REPLICA_CONNECTIONS" not in haproxy  # keep_alive: HAProxy's default
    per_request = ServerConfig(ingress="haproxy", replica_connections="per_request")
    assert cluster.node_env(per_request)["TEXTFLEET_REPLICA_CONNECTIONS"] == "per_request"
    assert "TEXTFLEET_REPLICA_CONNECTIONS=per_request ray start" in "\n".join(
        cluster.ray_start_commands(per_request)
    )
    # Ray's proxy has no such setting.
    assert "TEXTFLEET_REPLICA_CONNECTIONS" not in cluster.node_env(
        ServerConfig(replica_connections="per_request")
    )


# ---------------------------------------------------------------- KubeRay


def kuberay_manifest(tmp_path: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    shutil.copy(EXAMPLE, tmp_path / "models.yaml")
    out = textfleet(
        "config", str(tmp_path / "models.yaml"), "--target", "kuberay", *extra, cwd=tmp_path
    )
    return (yaml.safe_load(out.stdout) if out.returncode == 0 else {}), out


def test_kuberay_needs_an_image(tmp_path):
    _, out = kuberay_manifest(tmp_path)
    assert out.returncode == 2 and "--image" in out.stderr


def test_kuberay_serve_config_round_trips_through_rays_schema(tmp_path):
    manifest, out = kuberay_manifest(tmp_path, "--image", "registry.example/textfleet:1")
    assert out.returncode == 0, out.stderr
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    for path in machine_paths(tmp_path):
        assert path not in out.stdout
    text = manifest["spec"]["serveConfigV2"]
    assert isinstance(text, str)  # KubeRay takes it as a string
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    again = ServeDeploySchema.model_validate(schema.model_dump(exclude_unset=True))
    assert again == schema
    assert yaml.safe_load(text) == cluster.cluster_serve_config(load_models(EXAMPLE))


def test_kuberay_pods_get_the_ingress_env_metrics_port_and_image(tmp_path):
    manifest, _ = kuberay_manifest(tmp_path, "--image", "img:1")
    spec = manifest["spec"]["rayClusterConfig"]
    env = cluster.node_env(load_models(EXAMPLE).server)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == "img:1"
        assert {e["name"]: e["value"] for e in container["env"]} == env
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        assert {"name": "metrics", "containerPort": 8080} in container["ports"]
        assert {"name": "serve", "containerPort": 8000} in container["ports"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas there
    assert spec["enableInTreeAutoscaling"] is True  # a model autoscales


def test_kuberay_cpu_requests_cover_every_replica(tmp_path):
    manifest, _ = kuberay_manifest(tmp_path, "--image", "img:1", "--worker-cpus", "3")
    groups = {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    workers = groups["workers"]
    pod_cpus = float(workers["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])
    assert workers["rayStartParams"]["num-cpus"] == "3" and pod_cpus == 3
    # MiniLM: 4 replicas x 2 CPUs at most, the gateway 1 replica x 1 CPU (Serve's default).
    assert workers["maxReplicas"] * pod_cpus >= 4 * 2 + 1
    assert workers["maxReplicas"] == math.ceil(9 / 3)
    assert workers["minReplicas"] * pod_cpus >= 1 * 2 + 1
    # The model pinned by a custom resource gets pods that offer it, one replica each.
    pinned = groups["model-categorium"]
    assert json.loads(json.loads(pinned["rayStartParams"]["resources"])) == {"big_memory": 1.0}
    assert pinned["rayStartParams"]["num-cpus"] == "1"
    assert pinned["minReplicas"] == pinned["maxReplicas"] == 1


# ---------------------------------------------------------------- model_uri and its pin


def fake_model_dir(folder: Path) -> Path:
    """A directory with textfleet.json's checksums (all check_pin reads)."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph" * 100)
    (folder / "tokenizer.json").write_text("{}")
    checksums = {n: model_source.file_digest(folder / n) for n in ("model.onnx", "tokenizer.json")}
    (folder / "textfleet.json").write_text(json.dumps({"checksums": checksums}))
    return folder


def test_pack_writes_a_zip_ray_unpacks_to_the_model_and_returns_its_pin(tmp_path):
    from ray._private.runtime_env.packaging import unzip_package

    model = fake_model_dir(tmp_path / "my-model")
    pin = model_source.pack(model, tmp_path / "my-model.zip")
    assert pin == model_source.file_digest(model / "textfleet.json")
    # Ray's own unpacking of a remote working_dir: the top-level folder goes.
    unzip_package(str(tmp_path / "my-model.zip"), str(tmp_path / "node"), True, False)
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == sorted(
        p.name for p in model.iterdir()
    )
    model_source.check_pin(tmp_path / "node", pin)


def test_pin_refuses_another_model_or_a_changed_file(tmp_path):
    model = fake_model_dir(tmp_path / "m")
    pin = model_source.file_digest(model / "textfleet.json")
    with pytest.raises(ValueError, match="a different model"):
        model_source.check_pin(model, "0" * 64)
    (model / "model.onnx").write_bytes(b"other")
    with pytest.raises(ValueError, match="model.onnx does not match its checksum"):
        model_source.check_pin(model, pin)


def test_replica_resolves_the_archive_path_against_its_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_source.replica_model_dir(Path(".")) == tmp_path
    assert model_source.replica_model_dir(Path("sub/m")) == tmp_path / "sub" / "m"
    assert model_source.replica_model_dir(Path("/abs/m")) == Path("/abs/m")


def test_cli_pack_prints_the_pin(tmp_path):
    model = fake_model_dir(tmp_path / "m")
    out = textfleet("pack", str(model), "-o", str(tmp_path / "m.zip"))
    assert out.returncode == 0, out.stderr
    pin = model_source.file_digest(model / "textfleet.json")
    assert f"model_sha256: {pin}" in out.stdout


# ---------------------------------------------------------------- serve --address


def node(env: dict[str, str], metrics: int = 8080) -> dict:
    return {"node": "10.0.0.2 (abcd1234)", "metrics_export_port": metrics, "env": env}


def test_matching_cluster_reports_no_difference():
    server = ServerConfig(host="0.0.0.0", port=8000)
    nodes = [node(cluster.node_env(server))]
    running = {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 31.0}
    assert attach.ingress_differences(server, nodes, running, 31.0) == []


def test_ingress_differences_name_the_node_and_the_setting():
    server = ServerConfig(ingress="haproxy", host="0.0.0.0", port=8000)
    running = {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 6.0}
    found = attach.ingress_differences(server, [node({}, metrics=9999)], running, 301.0)
    text = "\n".join(found)
    assert "node 10.0.0.2 (abcd1234): ingress ray-proxy, models.yaml asks for haproxy" in text
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in text
    assert "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0" in text
    assert "metrics on port 9999, models.yaml says 8080" in text
    assert "HTTP host '127.0.0.1', models.yaml says '0.0.0.0'" in text
    assert "request_timeout_s 6.0, models.yaml's longest deadline needs 301" in text


def test_replica_connections_differences_name_the_node():
    keep_alive = ServerConfig(ingress="haproxy")
    per_request = ServerConfig(ingress="haproxy", replica_connections="per_request")
    started = node(cluster.node_env(per_request))
    assert attach.ingress_differences(per_request, [started], None) == []
    (found,) = attach.ingress_differences(per_request, [node(cluster.node_env(keep_alive))], None)
    assert "ran without TEXTFLEET_REPLICA_CONNECTIONS=per_request" in found
    (found,) = attach.ingress_differences(keep_alive, [started], None)
    assert "ran with TEXTFLEET_REPLICA_CONNECTIONS=per_request" in found
    assert "asks for replica_connections keep_alive" in found


def test_textfleet_is_imported_from_the_installed_package_not_a_path():
    """Ray's workers import textfleet like any process of this interpreter: no
    generated config or Ray start-up sets PYTHONPATH (a cluster installs textfleet)."""
    for config in (
        serve_config(load_models(EXAMPLE)),
        kuberay.rayservice(load_models(EXAMPLE), "i"),
    ):
        assert "PYTHONPATH" not in json.dumps(config)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-P", "-c", "import textfleet.serve.app as a; print(a.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        check=True,
    )
    assert found.stdout.strip().endswith("app.py")


def test_a_replica_refuses_a_model_other_than_its_pin(model_dir):
    from textfleet.engine.errors import ModelDirError
    from textfleet.serve.config import parse_model
    from textfleet.serve.server import load_engine

    cfg = parse_model(
        {"name": "pinned", "model_dir": str(model_dir.path), "model_sha256": "0" * 64}
    )
    with pytest.raises(ModelDirError, match="model 'pinned': cannot load .*model_sha256 is 000"):
        load_engine(cfg)
