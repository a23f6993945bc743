"""Which directory a pool member id names, checked before anything is opened.

A pool serves ``<model_root>/<id>/`` as member ``<id>``, and the id comes from
the client (the path ``/v2/models/<pool>/<id>/...``, the body's
``"model": "<pool>/<id>"``, a handle's ``multiplexed_model_id``). So an id is
accepted only when:

- it matches ``MEMBER_ID_PATTERN`` (letters, digits, ``.``, ``_``, ``-``; first a
  letter or digit): no ``/``, no ``\\``, no ``%`` (a percent-encoded dot or slash
  that a proxy did not decode stays a ``%``), not ``.`` or ``..``, not absolute;
- ``<model_root>/<id>``, every symlink resolved, is a directory directly inside
  the resolved ``model_root`` (a symlink to a directory elsewhere, or one that
  points back out through ``..``, is refused).

Otherwise ``MemberNotFound`` (404) names the pool and the id (shortened), and no
file below or beside ``model_root`` has been opened: the checks only look at
names and resolve links. Pure functions, no Ray: tested without a server.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from textfleet.serve.protocols.common import NotFound, short_repr

MEMBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A member id: one path component that can be neither ``.`` nor ``..`` (it starts with
a letter or digit), holding nothing a URL or a file system treats specially."""

_ID_RE = re.compile(MEMBER_ID_PATTERN)


class MemberNotFound(NotFound):
    """A member id that is malformed, escapes the pool's root or names no directory (404)."""


def check_member_id(pool: str, member_id: object) -> str:
    """``member_id`` if it matches the pattern, else MemberNotFound naming pool and id."""
    if not isinstance(member_id, str) or not _ID_RE.fullmatch(member_id):
        raise MemberNotFound(
            f"pool {pool!r} has no member {short_repr(member_id)}: a member id is one name of "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return member_id


def member_dir(root: Path, pool: str, member_id: object) -> Path:
    """The resolved directory of member ``member_id`` of ``pool`` under ``root`` (itself
    resolved), after the checks above; MemberNotFound if any fails."""
    member_id = check_member_id(pool, member_id)
    candidate = root / member_id
    # resolve() follows every link without opening anything; containment is decided on
    # the result, so a link inside the root that points out of it is refused here.
    resolved = Path(os.path.realpath(candidate))
    if resolved.parent != root or not resolved.is_dir():
        raise MemberNotFound(
            f"pool {pool!r} has no member {member_id!r} (no directory of that name "
            "inside the pool's model_root)"
        )
    return resolved


def list_members(root: Path, pool: str) -> list[str]:
    """The ids of every directory under ``root`` that ``member_dir`` accepts, sorted."""
    try:
        names = sorted(e.name for e in os.scandir(root))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            member_dir(root, pool, name)
        except MemberNotFound:
            continue
        out.append(name)
    return out


def resolved_root(model_root: str | os.PathLike) -> Path:
    """``model_root`` with every link resolved: the directory members must sit in."""
    return Path(os.path.realpath(model_root))
