"""Pools without Ray: which member ids resolve inside model_root, and the ``pool:`` schema.

Ids come from clients (URL paths, bodies, handle options), so everything that is
not one plain directory name directly inside the root is refused before any file
is opened: traversal, separators, percent-encoded dots, absolute paths, and a
symlink inside the root that points out of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from textfleet.serve.config import POOL_DEPLOYMENT, ConfigError, load_models, parse_models
from textfleet.serve.generate import POOL_BUILDER, missing_model_dirs, serve_config
from textfleet.serve.pool_members import (
    MemberNotFound,
    check_member_id,
    list_members,
    member_dir,
    resolved_root,
)


@pytest.fixture
def root(tmp_path) -> Path:
    """A model_root holding members a, b.2 and an alias of a, beside a folder outside it
    and links that lead there."""
    base = tmp_path / "root"
    for name in ("a", "b.2"):
        (base / name).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "alias").symlink_to(base / "a")
    (base / "escape").symlink_to(outside)
    (base / "escape-up").symlink_to(Path("..") / "outside")
    (base / "nested").mkdir()
    (base / "nested" / "deep").mkdir()
    (base / "deep-link").symlink_to(base / "nested" / "deep")
    (base / "file").write_text("not a directory")
    return resolved_root(base)


@pytest.mark.parametrize("member_id", ["a", "b.2", "A-1_x", "9", "x" * 128])
def test_plain_names_are_ids(member_id):
    assert check_member_id("p", member_id) == member_id


@pytest.mark.parametrize(
    "member_id",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "/etc",
        "/etc/passwd",
        "%2e%2e",
        "%2E%2E%2Fx",
        "a%2Fb",
        ".hidden",
        "-x",
        "a b",
        "a\x00",
        "ü",
        "x" * 129,
        None,
        3,
    ],
)
def test_anything_else_is_404_naming_pool_and_id(member_id):
    with pytest.raises(MemberNotFound, match="pool 'p' has no member"):
        check_member_id("p", member_id)


def test_members_resolve_inside_the_root(root):
    assert member_dir(root, "p", "a") == root / "a"
    assert member_dir(root, "p", "b.2") == root / "b.2"
    # A link to a member inside the root is that member, under another id.
    assert member_dir(root, "p", "alias") == root / "a"


@pytest.mark.parametrize("member_id", ["escape", "escape-up", "deep-link", "file", "missing"])
def test_links_out_files_and_missing_are_404(root, member_id):
    with pytest.raises(MemberNotFound, match=f"pool 'p' has no member '{member_id}'"):
        member_dir(root, "p", member_id)


def test_a_root_reached_through_a_link(tmp_path, root):
    link = tmp_path / "root-link"
    link.symlink_to(root)
    assert member_dir(resolved_root(link), "p", "a") == root / "a"


def test_list_members_lists_what_resolves(root):
    assert list_members(root, "p") == ["a", "alias", "b.2", "nested"]
    assert list_members(root / "missing", "p") == []


def test_nothing_outside_is_opened(tmp_path, root):
    """The refusal comes from names and links alone: an unreadable target changes nothing."""
    outside = tmp_path / "outside"
    os.chmod(outside, 0)
    try:
        with pytest.raises(MemberNotFound):
            member_dir(root, "p", "escape")
    finally:
        os.chmod(outside, 0o755)


# ---------------------------------------------------------------- models.yaml


def write(tmp_path: Path, entry: dict) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return path


def test_pool_entry(tmp_path):
    (tmp_path / "members").mkdir()
    entry = {
        "name": "intents",
        "task": "classification",
        "threads": 2,
        "batching": {"max_wait_ms": 3, "workers": 2},
        "pool": {
            "model_root": "members",
            "max_models_per_replica": 8,
            "member": {"threads": 1, "batching": {"workers": 1}},
        },
        "num_replicas": 2,
    }
    models = load_models(write(tmp_path, entry))
    m = models.model("intents")
    assert m.pool.model_root == (tmp_path / "members").resolve()
    assert m.pool.max_models_per_replica == 8
    assert models.app_names() == ["intents"]
    member = m.member_config("c1", tmp_path / "members" / "c1")
    assert member.name == "intents/c1" and member.pool is None
    assert member.model_dir == (tmp_path / "members" / "c1").resolve()
    assert member.threads == 1 and member.task == "classification"
    # A member's batching knob lays over the entry's, knob by knob.
    assert member.engine_config()["batching"] == {"max_wait_ms": 3, "workers": 1}
    # The entry as a pool's replica gets it (serve/app.py) gives the same member.
    again = type(m).model_validate(m.model_dump(mode="json", exclude_unset=True))
    assert again.member_config("c1", tmp_path / "members" / "c1") == member

    app = serve_config(models)["applications"][0]
    assert app["name"] == "intents" and app["route_prefix"] == "/v2/models/intents"
    assert app["import_path"] == POOL_BUILDER
    assert app["deployments"][0]["name"] == POOL_DEPLOYMENT
    assert app["deployments"][0]["num_replicas"] == 2
    assert "model_dir" not in app["args"] and app["args"]["pool"]["max_models_per_replica"] == 8
    assert missing_model_dirs(models) == []


def test_missing_root_is_a_warning(tmp_path):
    models = load_models(write(tmp_path, {"name": "p", "pool": {"model_root": "nowhere"}}))
    assert missing_model_dirs(models) == [
        f"model 'p': pool.model_root {tmp_path / 'nowhere'} does not exist on this machine"
    ]


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"model_dir": "x"}, "model_dir"),
        ({"versions": [{"version": "1", "model_dir": "x", "weight": 1}]}, "versions"),
        ({"model_uri": "https://example.com/m.zip"}, "model_uri"),
    ],
)
def test_pool_excludes_a_model_of_its_own(tmp_path, extra, field):
    entry = {"name": "p", "pool": {"model_root": "m"}, **extra}
    with pytest.raises(ConfigError, match=f"model 'p': .*pool: .*remove .*{field}"):
        parse_models({"models": [entry]}, base_dir=tmp_path)


@pytest.mark.parametrize(
    "pool, field",
    [
        ({"model_root": "m", "max_models_per_replica": 0}, "pool.max_models_per_replica"),
        ({"model_root": "m", "member": {"threads": 0}}, "pool.member.threads"),
        ({"model_root": "m", "member": {"treads": 1}}, "pool.member.treads"),
        ({"model_root": "m", "members": 3}, "pool.members"),
        ({}, "pool.model_root"),
    ],
)
def test_pool_field_errors_name_model_and_field(tmp_path, pool, field):
    with pytest.raises(ConfigError, match=f"model 'p': field '{field}'"):
        parse_models({"models": [{"name": "p", "pool": pool}]}, base_dir=tmp_path)


def test_member_batching_is_checked_after_merging(tmp_path):
    entry = {"name": "p", "pool": {"model_root": "m", "member": {"batching": {"workers": 0}}}}
    with pytest.raises(ConfigError, match=r"model 'p': .*pool\.member.*batching.*workers"):
        parse_models({"models": [entry]}, base_dir=tmp_path)
