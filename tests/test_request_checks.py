"""What is checked before a request is parsed, as pure functions (no Ray):
API keys (models.yaml source, digests, the per-request check), media types,
and the short form of client values in error messages.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
import yaml

from textfleet.serve import auth
from textfleet.serve.config import ConfigError, parse_models
from textfleet.serve.generate import serve_config
from textfleet.serve.protocols.body import check_media_type
from textfleet.serve.protocols.common import (
    Unauthorized,
    UnsupportedMediaType,
    error_reply,
    short_repr,
)

KEY, OTHER = "tf-unit-key-0123456789abcdef", "tf-unit-other-0123456789abcd"


def models(api_keys, base_dir=None, limits=(4096, 65536)):
    entries = [
        {"name": f"m{i}", "model_dir": "/nowhere", "limits": {"max_request_bytes": n}}
        for i, n in enumerate(limits)
    ]
    return parse_models({"server": {"api_keys": api_keys}, "models": entries}, base_dir=base_dir)


# ---------------------------------------------------------------- models.yaml


@pytest.mark.parametrize(
    "inline", [[KEY], KEY, {"keys": [KEY]}, {"env": KEY}, {"env": f"{KEY},{OTHER}"}]
)
def test_inline_keys_are_refused_without_echoing_them(inline):
    with pytest.raises(ConfigError, match=r"field 'server\.api_keys'") as e:
        models(inline)
    assert KEY not in str(e.value) and KEY[:10] not in str(e.value)


def test_one_source_exactly():
    with pytest.raises(ConfigError, match="set exactly one of env or file"):
        models({"env": "A", "file": "b"})
    with pytest.raises(ConfigError, match="set exactly one of env or file"):
        models({})


def test_keys_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("TF_KEYS", f" {KEY} ,{OTHER},")
    assert auth.read_keys(models({"env": "TF_KEYS"}).server.api_keys) == [KEY, OTHER]
    monkeypatch.delenv("TF_KEYS")
    with pytest.raises(ConfigError, match="environment variable TF_KEYS is not set"):
        serve_config(models({"env": "TF_KEYS"}))
    monkeypatch.setenv("TF_KEYS", " , ")
    with pytest.raises(ConfigError, match="TF_KEYS holds no keys"):
        serve_config(models({"env": "TF_KEYS"}))
    monkeypatch.setenv("TF_KEYS", f"{KEY},short")
    with pytest.raises(ConfigError, match="key 2 is 5 characters") as e:
        serve_config(models({"env": "TF_KEYS"}))
    assert "short" not in str(e.value).replace("a key must", "")


def test_keys_from_a_file_relative_to_the_yaml(tmp_path):
    (tmp_path / "keys.txt").write_text(f"# ops keys\n{KEY}\n\n{OTHER}\n")
    source = models({"file": "keys.txt"}, base_dir=tmp_path).server.api_keys
    assert source.file == tmp_path / "keys.txt"
    assert auth.read_keys(source) == [KEY, OTHER]
    with pytest.raises(ConfigError, match="cannot read"):
        auth.read_keys(models({"file": "missing.txt"}, base_dir=tmp_path).server.api_keys)


def test_the_generated_config_holds_digests_and_the_gateway_cap(monkeypatch):
    monkeypatch.setenv("TF_KEYS", f"{KEY},{OTHER}")
    config = serve_config(models({"env": "TF_KEYS"}))
    text = yaml.safe_dump(config)
    assert KEY not in text and OTHER not in text
    want = sorted(hashlib.sha256(k.encode()).hexdigest() for k in (KEY, OTHER))
    user_configs = [app["deployments"][0]["user_config"] for app in config["applications"]]
    assert all(u[auth.KEYS_ARG] == want for u in user_configs)
    # The gateway reads at most the largest model's limit.
    assert user_configs[-1]["max_request_bytes"] == 65536
    # The keys are a light update: the builders' args do not change with them.
    plain = serve_config(parse_models({"models": [{"name": "a", "model_dir": "/x"}]}))
    assert all(
        app["deployments"][0]["user_config"][auth.KEYS_ARG] == []
        and auth.KEYS_ARG not in app["args"]
        for app in plain["applications"]
    )


def test_user_config_is_checked():
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    check = auth.from_user_config({auth.KEYS_ARG: [digest]})
    check.check({"x-api-key": KEY})
    assert not auth.from_user_config({auth.KEYS_ARG: []}).enabled
    with pytest.raises(ConfigError, match="entry 0 is not a hex SHA-256 digest"):
        auth.from_user_config({auth.KEYS_ARG: [KEY]})
    with pytest.raises(ConfigError, match="unknown field"):
        auth.from_user_config({"max_request_bytes": 1})
    auth.from_user_config({"max_request_bytes": 1}, others=("max_request_bytes",))


# ---------------------------------------------------------------- the check


@pytest.fixture
def check():
    return auth.KeyCheck([auth.digest(KEY), auth.digest(OTHER)])


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer   {OTHER}"},
        {"x-api-key": KEY},
        {"authorization": "Basic abc", "x-api-key": OTHER},
    ],
)
def test_a_known_key_passes(check, headers):
    check.check(headers)
    assert check.allows(headers)


@pytest.mark.parametrize(
    "headers, field",
    [
        ({}, "Authorization"),
        ({"authorization": "Bearer"}, "Authorization"),
        ({"authorization": f"Basic {KEY}"}, "Authorization"),
        ({"authorization": f"Bearer {KEY[:-1]}"}, "Authorization"),
        ({"authorization": f"Bearer {KEY} extra"}, "Authorization"),
        ({"x-api-key": KEY.upper()}, "x-api-key"),
        ({"x-api-key": "é" * 20}, "x-api-key"),
    ],
)
def test_anything_else_is_401_naming_the_header_never_the_key(check, headers, field):
    with pytest.raises(Unauthorized) as e:
        check.check(headers)
    assert e.value.field == field
    reply = error_reply(e.value)
    assert reply.status == 401
    assert dict(reply.headers)["WWW-Authenticate"].startswith("Bearer")
    assert KEY[:8].encode() not in reply.body
    assert not check.allows(headers)


def test_no_digests_no_check():
    assert not auth.KeyCheck().enabled
    auth.KeyCheck().check({})


# ---------------------------------------------------------------- media types


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "",
        "application/json",
        "Application/JSON; charset=UTF-8",
        'application/json; charset="utf8"',
        "application/vnd.kserve+json",
    ],
)
def test_json_or_nothing_is_accepted(ctype):
    check_media_type({} if ctype is None else {"content-type": ctype})


def test_octet_stream_only_where_binary_tensors_are_spoken():
    headers = {"content-type": "application/octet-stream"}
    check_media_type(headers, binary_ok=True)
    with pytest.raises(UnsupportedMediaType, match="Content-Type: 'application/octet-stream'"):
        check_media_type(headers)


@pytest.mark.parametrize(
    "headers, field",
    [
        ({"content-type": "text/plain"}, "Content-Type"),
        ({"content-type": "application/x-www-form-urlencoded"}, "Content-Type"),
        ({"content-type": "multipart/form-data; boundary=x"}, "Content-Type"),
        ({"content-type": "application/json; charset=latin-1"}, "Content-Type"),
        ({"content-type": "text/json"}, "Content-Type"),
        ({"content-type": "x" * 10_000}, "Content-Type"),
        ({"content-encoding": "gzip"}, "Content-Encoding"),
    ],
)
def test_other_types_and_encodings_are_415(headers, field):
    with pytest.raises(UnsupportedMediaType) as e:
        check_media_type(headers, binary_ok=True)
    assert e.value.field == field and len(str(e.value)) < 200
    assert error_reply(e.value).status == 415


# ---------------------------------------------------------------- short_repr


def deep(n: int):
    value: list = []
    for _ in range(n):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value, want",
    [
        ("FP32", "'FP32'"),
        ("x" * 100, "'" + "x" * 40 + "'..."),
        (3, "3"),
        (None, "None"),
        (True, "True"),
        ([1, 2, 3], "an array of 3"),
        ({"a": 1}, "an object of 1 keys"),
        (b"\xff" * 9, "9 bytes"),
        (deep(sys.getrecursionlimit() * 2), "an array of 1"),
    ],
)
def test_short_repr_is_short_and_never_recurses(value, want):
    assert short_repr(value) == want
