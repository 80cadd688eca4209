"""Service settings, read from the environment (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kb.config import default_home
from kb_base.errors import InvalidInputError
from stores.commit_point.lease import lease_seconds


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInputError(f"environment variable {name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise InvalidInputError(f"environment variable {name} must be positive, got {value}")
    return value


@dataclass
class ServiceSettings:
    home: Path = field(default_factory=default_home)
    auth: bool = True  # KB_AUTH=off turns it off, for local use only
    max_body_bytes: int = 64 * 1024 * 1024
    max_batch: int = 5000
    max_k: int = 1000
    bootstrap_admin_key: str | None = None
    warmup: bool = True  # load the local embedding model at start-up; /readyz waits for it
    ray_address: str | None = None  # KB_RAY_ADDRESS: sync jobs extract and embed on this Ray cluster

    @classmethod
    def from_env(cls) -> ServiceSettings:
        auth = os.environ.get("KB_AUTH", "on").strip().lower()
        if auth not in ("on", "off"):
            raise InvalidInputError(f"KB_AUTH must be 'on' or 'off', got {auth!r}")
        try:
            lease_seconds()  # checked at start, not at the first write across servers
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        return cls(
            home=default_home(),
            auth=auth == "on",
            max_body_bytes=_int("KB_MAX_BODY_BYTES", 64 * 1024 * 1024),
            max_batch=_int("KB_MAX_BATCH", 5000),
            max_k=_int("KB_MAX_K", 1000),
            bootstrap_admin_key=os.environ.get("KB_BOOTSTRAP_ADMIN_KEY") or None,
            warmup=os.environ.get("KB_WARMUP", "on").strip().lower() != "off",
            ray_address=os.environ.get("KB_RAY_ADDRESS", "").strip() or None,
        )
