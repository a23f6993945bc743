"""API keys: read from where models.yaml says, checked on every request.

``server.api_keys`` names a source (``{env: NAME}`` or ``{file: path}``,
``serve/config.py``). The driver reads the keys when it builds the Ray Serve
config and hands every deployment only their SHA-256 digests, in its
``user_config`` (``{"api_key_sha256": [...]}``): the generated config file
never holds a key in clear, a replica on another machine needs neither the
variable nor the file, and changing the keys is Ray Serve's light update
(``reconfigure`` on the running replicas), not a restart.

A request presents a key as ``Authorization: Bearer <key>`` (OpenAI style) or
``x-api-key: <key>``. Its digest is compared with every known digest by
``hmac.compare_digest``, all of them each time. A key is never logged nor put
in a message. Open without a key: ``/v2/health/live`` and ``/v2/health/ready``
(what liveness and readiness probes call; the latter then says only ready or
not, without the models).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from textfleet.serve.config import ApiKeysConfig, ConfigError
from textfleet.serve.protocols.common import Unauthorized

KEYS_ARG = "api_key_sha256"
"""The ``user_config`` field carrying the digests (hex) to every deployment."""

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Gateway paths answered without a key (probes)."""

MIN_KEY_CHARS = 16
# Printable ASCII without spaces or commas: what an HTTP header carries
# unchanged and what the comma-separated variable can hold.
_KEY_RE = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def read_keys(source: ApiKeysConfig) -> list[str]:
    """The keys from the variable or file ``source`` names; errors name the source, no key."""
    if source.env is not None:
        where = f"server.api_keys: environment variable {source.env}"
        raw = os.environ.get(source.env)
        if raw is None:
            raise ConfigError(f"{where} is not set")
        keys = [k.strip() for k in raw.split(",")]
    else:
        where = f"server.api_keys: file {source.file}"
        try:
            text = Path(source.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{where}: cannot read: {getattr(e, 'strerror', None) or e}"
            ) from None
        keys = [line.strip() for line in text.splitlines()]
        keys = [k for k in keys if not k.startswith("#")]
    keys = [k for k in keys if k]
    if not keys:
        raise ConfigError(f"{where} holds no keys")
    for i, key in enumerate(keys):
        if len(key) < MIN_KEY_CHARS or not _KEY_RE.match(key):
            raise ConfigError(
                f"{where}: key {i + 1} is {len(key)} characters; a key must be at least "
                f"{MIN_KEY_CHARS} printable ASCII characters without spaces or commas"
            )
    return keys


def digest(key: str | bytes) -> str:
    raw = key.encode("latin-1") if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


def key_digests(source: ApiKeysConfig | None) -> list[str]:
    """Hex SHA-256 of each key, sorted (stable builder args); [] when no keys are asked."""
    if source is None:
        return []
    return sorted({digest(k) for k in read_keys(source)})


def from_user_config(user_config: Any, others: tuple[str, ...] = ()) -> KeyCheck:
    """The check a deployment's ``user_config`` asks for; ``others``: its other fields."""
    if not isinstance(user_config, dict):
        raise ConfigError(f"user_config: expected a mapping, got {type(user_config).__name__}")
    unknown = sorted(set(user_config) - {KEYS_ARG, *others})
    if unknown:
        raise ConfigError(f"user_config: unknown field(s) {', '.join(map(str, unknown))}")
    digests = user_config.get(KEYS_ARG) or []
    if not isinstance(digests, list | tuple):
        raise ConfigError(f"user_config.{KEYS_ARG}: expected a list of hex SHA-256 digests")
    return KeyCheck(digests)


class KeyCheck:
    """The per-request check; without digests every request passes."""

    def __init__(self, digests: Iterable[str] = ()):
        digests = list(digests)
        bad = [i for i, d in enumerate(digests) if not (isinstance(d, str) and _HEX_RE.match(d))]
        if bad:
            raise ConfigError(f"{KEYS_ARG}: entry {bad[0]} is not a hex SHA-256 digest")
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, headers: Mapping[str, str]) -> bool:
        try:
            self.check(headers)
        except Unauthorized:
            return False
        return True

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise Unauthorized (401) unless the request presents a known key."""
        if not self._digests:
            return
        field, key = presented_key(headers)
        if key is None:
            raise Unauthorized(
                "Authorization", "no API key; send 'Authorization: Bearer <key>' or 'x-api-key'"
            )
        presented = hashlib.sha256(key.encode("latin-1", "replace")).digest()
        ok = False
        for known in self._digests:  # no early exit: the time does not depend on which
            ok |= hmac.compare_digest(known, presented)
        if not ok:
            raise Unauthorized(field, "the API key is not valid")


def presented_key(headers: Mapping[str, str]) -> tuple[str, str | None]:
    """(header it came in, the key) from ``Authorization: Bearer`` or ``x-api-key``."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "Authorization", token.strip()
    key = headers.get("x-api-key", "").strip()
    return ("x-api-key", key) if key else ("Authorization", None)
