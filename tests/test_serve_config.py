"""models.yaml schema and the Ray Serve config generator (no Ray cluster needed).

Good and bad configs are fixtures in tests/configs/; each bad one states the
error it must produce on its first lines (``# error: <text>``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from textfleet.engine import Engine, EngineConfig
from textfleet.serve.config import (
    GATEWAY_APP,
    ConfigError,
    ModelConfig,
    load_models,
    parse_model,
    parse_models,
)
from textfleet.serve.generate import (
    dump,
    missing_model_dirs,
    serve_config,
    write_serve_config,
)

CONFIGS = Path(__file__).parent / "configs"
REPO = Path(__file__).resolve().parents[1]
GOOD = sorted((CONFIGS / "good").glob("*.yaml"))
BAD = sorted((CONFIGS / "bad").glob("*.yaml"))


def expected_errors(path: Path) -> list[str]:
    return [
        line.removeprefix("# error:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# error:")
    ]


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_configs_load_and_generate_valid_ray_configs(path):
    models = load_models(path)
    config = serve_config(models)
    # Ray's own schema accepts what we generate, as `serve deploy` would.
    schema = ServeDeploySchema.model_validate(config)
    names = [a.name for a in schema.applications]
    assert names == [*models.names(), GATEWAY_APP]
    for app, m in zip(schema.applications, models.models, strict=False):
        assert app.route_prefix == f"/v2/models/{m.name}"
        assert app.import_path == "textfleet.serve.app:build_model_app"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_configs_fail_naming_model_and_field(path):
    wanted = expected_errors(path)
    assert wanted, f"{path.name} must state its expected error in a '# error:' line"
    with pytest.raises(ConfigError) as err:
        load_models(path)
    for text in wanted:
        assert text in str(err.value), f"{text!r} not in:\n{err.value}"
    assert str(path) in str(err.value)  # the message says which file


def test_relative_model_dir_resolves_against_the_yaml_folder(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "models.yaml").write_text("models:\n  - {name: a, model_dir: ../m/a}\n")
    models = load_models(sub / "models.yaml")
    assert models.model("a").model_dir == (tmp_path / "m" / "a").resolve()
    # ... whatever the current directory is when it is loaded.
    assert models.model("a").model_dir.is_absolute()


def test_defaults_reach_the_batcher():
    m = parse_models({"models": [{"name": "a", "model_dir": "/x"}]}).model("a")
    assert m.max_ongoing_requests >= 256  # Ray's default of 5 would starve batching
    assert m.task is None and m.backend == "onnxruntime" and m.device == "cpu"
    assert m.deployment_options() == {
        "max_ongoing_requests": 256,
        "max_queued_requests": 2048,
        "backpressure_config": {"status_code": 503, "retry_after_s": 1.0},
        # Ray's 10 s would leave a killed replica's model down for up to 10 s more.
        "health_check_period_s": 2.0,
        "num_replicas": 1,
    }
    assert m.request_timeout_s == 30.0


def test_cuda_device_reserves_a_gpu_unless_told_otherwise():
    m = parse_models({"models": [{"name": "a", "model_dir": "/x", "device": "cuda"}]}).model("a")
    assert m.ray_actor_options.num_gpus == 1.0
    m = parse_models(
        {
            "models": [
                {
                    "name": "a",
                    "model_dir": "/x",
                    "device": "cuda:1",
                    "ray_actor_options": {"num_gpus": 0.5},
                }
            ]
        }
    ).model("a")
    assert m.ray_actor_options.num_gpus == 0.5


def test_a_model_entry_round_trips_to_the_engine_config(model_dir):
    """The engine settings written in models.yaml are the config the replica loads with."""
    engine_part = {
        "backend": "onnxruntime",
        "device": "cpu",
        "threads": 1,
        "max_length": 64,
        "batching": {"max_batch_size": 4, "max_wait_ms": 1, "workers": 1},
    }
    entry = {"name": "a", "model_dir": str(model_dir.path), "num_replicas": 2, **engine_part}
    wanted = EngineConfig(**engine_part)
    models = parse_models({"models": [entry]})
    assert EngineConfig.model_validate(models.model("a").engine_config()) == wanted
    # Only the knobs the entry sets are passed on: the others stay the engine's to
    # resolve (model directory, then device defaults).
    assert models.model("a").engine_config()["batching"] == engine_part["batching"]
    # Through the generated Ray config's args, as a replica validates them.
    args = serve_config(models)["applications"][0]["args"]
    replica_config = parse_model(args).engine_config()
    assert EngineConfig.model_validate(replica_config) == wanted
    with Engine.load(model_dir, replica_config) as engine:
        assert engine.config == wanted
        assert (engine.max_length, engine.batching.max_batch_size) == (64, 4)


def test_engine_settings_are_validated_by_the_engine_schema():
    """One schema: the entry's engine fields are EngineConfig's, with its messages."""
    assert issubclass(ModelConfig, EngineConfig)
    m = parse_models({"models": [{"name": "a", "model_dir": "/x", "device": "cuda:3"}]})
    assert m.model("a").engine_config()["device"] == "cuda:3"
    with pytest.raises(ConfigError, match="model 'a': field 'backend'"):
        parse_models({"models": [{"name": "a", "model_dir": "/x", "backend": "tf"}]})
    with pytest.raises(ConfigError, match=r"field 'device': got 'cuda:x'; expected 'cpu', 'cuda'"):
        parse_models({"models": [{"name": "a", "model_dir": "/x", "device": "cuda:x"}]})


def test_deployment_options_stay_out_of_builder_args():
    """Scaling a model must be a light update, not a rebuild: Ray compares args."""
    base = {"name": "a", "model_dir": "/x", "num_replicas": 1}
    one = parse_models({"models": [base]}).model("a")
    two = parse_models(
        {"models": [{**base, "num_replicas": 2, "ray_actor_options": {"num_cpus": 0}}]}
    ).model("a")
    assert one.builder_args() == two.builder_args()
    assert one.deployment_options() != two.deployment_options()
    changed = parse_models({"models": [{**base, "batching": {"max_batch_size": 8}}]}).model("a")
    assert changed.builder_args() != one.builder_args()


def test_adding_a_model_leaves_other_applications_identical():
    def apps(models):
        return {
            a["name"]: a for a in serve_config(parse_models({"models": models}))["applications"]
        }

    a = {"name": "a", "model_dir": "/x"}
    b = {"name": "b", "model_dir": "/y"}
    before = apps([a, b])
    after = apps([a, {**b, "num_replicas": 2}, {"name": "c", "model_dir": "/z"}])
    assert after["a"] == before["a"]
    assert after[GATEWAY_APP] == before[GATEWAY_APP]  # the gateway never lists models
    assert after["b"]["args"] == before["b"]["args"]
    assert after["b"]["deployments"][0]["num_replicas"] == 2


def test_generated_file_round_trips_and_builder_accepts_its_args(tmp_path):
    src = CONFIGS / "good" / "full.yaml"
    out = tmp_path / "serve_config.yaml"
    text = write_serve_config(src, out)
    assert out.read_text() == text
    assert text.startswith("# Ray Serve config generated by `textfleet config`")
    config = yaml.safe_load(text)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert config["logging_config"] == {"log_level": "INFO", "enable_access_log": True}
    first = config["applications"][0]
    assert first["deployments"] == [
        {
            "name": "ModelServer",
            "max_ongoing_requests": 128,
            "max_queued_requests": 2048,
            "backpressure_config": {"status_code": 503, "retry_after_s": 1.0},
            "health_check_period_s": 2.0,
            "num_replicas": 2,
            "ray_actor_options": {
                "num_cpus": 1.0,
                "memory": 1000000000,
                "resources": {"special": 1.0},
            },
            "user_config": {"api_key_sha256": []},  # no server.api_keys: no keys
        }
    ]
    # The builder validates the same args (round trip through YAML).
    from textfleet.serve.app import build_model_app

    app = build_model_app(first["args"])
    assert app is not None


def test_builder_rejects_bad_args_naming_model_and_field():
    from textfleet.serve.app import build_model_app

    with pytest.raises(ConfigError, match=r"model 'a': field 'batching.max_batch_size'"):
        build_model_app({"name": "a", "model_dir": "/x", "batching": {"max_batch_size": 0}})


def test_missing_model_dirs_are_reported_not_fatal():
    models = parse_models({"models": [{"name": "a", "model_dir": "/nonexistent/a"}]})
    assert missing_model_dirs(models) == [
        "model 'a': model_dir /nonexistent/a does not exist on this machine"
    ]
    assert dump(serve_config(models))  # still generated


def test_default_models_yaml_is_valid():
    models = load_models(REPO / "models" / "models.yaml")
    assert models.names()
    for m in models.models:
        assert m.model_dir.is_absolute()


def test_hand_written_ray_config_uses_the_same_builders():
    from textfleet.serve.app import build_gateway_app, build_model_app

    config = yaml.safe_load((CONFIGS / "ray" / "handwritten.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    model_app, gateway_app = schema.applications
    app = build_model_app(model_app.args)
    deployment = app._bound_deployment  # what Ray deploys before config overrides
    assert deployment.name == "ModelServer"
    assert deployment.num_replicas == 2 and deployment.max_ongoing_requests == 256
    assert build_gateway_app(gateway_app.args)._bound_deployment.name == "Gateway"


def test_grpc_options_follow_server_grpc_port():
    """gRPC is on by default at Ray Serve's port, with the V2 service; null turns it off."""
    from ray.serve.config import gRPCOptions

    from textfleet.serve.generate import GRPC_SERVICER

    model = [{"name": "a", "model_dir": "/x"}]
    default = serve_config(parse_models({"models": model}))
    assert default["grpc_options"] == {"port": 9000, "grpc_servicer_functions": [GRPC_SERVICER]}
    schema = ServeDeploySchema.model_validate(default)
    # The servicer function imports, as Ray Serve's proxy imports it.
    (add,) = gRPCOptions(**schema.grpc_options.model_dump()).grpc_servicer_func_callable
    assert add.__name__ == "add_servicer_to_server"
    moved = serve_config(parse_models({"server": {"grpc_port": 9100}, "models": model}))
    assert moved["grpc_options"]["port"] == 9100
    off = serve_config(parse_models({"server": {"grpc_port": None}, "models": model}))
    assert "grpc_options" not in off
    ServeDeploySchema.model_validate(off)
