"""API keys: optional expiry, last use shown by ``kb keys list``, revocation seen by every worker at once."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import kb
from api.keys import ExpiredKeyError, KeyStore, parse_expiry
from tests.support.kb_serve import KBServe


def kb_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "kb"), *args], capture_output=True, text=True,
                          env={**os.environ, "KB_HOME": str(home)}, timeout=60, check=False)


def test_expiry_is_parsed_from_durations_and_dates() -> None:
    assert parse_expiry("30d", now=1000.0) == 1000.0 + 30 * 86400
    assert parse_expiry("90m", now=0.0) == 5400.0
    assert parse_expiry("2999-01-01") == parse_expiry("2999-01-01T00:00:00Z")
    for bad in ("soon", "10y", "2001-01-01"):
        with pytest.raises(kb.InvalidInputError):
            parse_expiry(bad)


def test_an_expired_key_is_refused_saying_so(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite")
    key = store.create("short", admin=True, expires_at=time.time() + 0.3)
    assert store.authenticate(key) is not None
    time.sleep(0.4)
    with pytest.raises(ExpiredKeyError, match="expired at"):
        store.authenticate(key)
    assert store.list()[0]["expired"] is True
    with pytest.raises(kb.InvalidInputError):
        store.create("past", expires_at=time.time() - 1)


def test_a_keys_file_from_before_expiry_is_taken_over_by_the_catalog(tmp_path: Path) -> None:
    """Release 0.1 kept keys in $KB_HOME/keys.sqlite (at first without expiry columns); the catalog takes them."""
    secret = "s" * 24
    conn = sqlite3.connect(tmp_path / "keys.sqlite")
    conn.execute("CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL, "
                 "admin INTEGER NOT NULL, roles TEXT NOT NULL, created_at REAL)")
    conn.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?)",
                 ("old1", "old", hashlib.sha256(secret.encode()).digest(), 1, "{}", time.time()))
    conn.commit()
    conn.close()
    upgraded = KeyStore.for_home(tmp_path)  # a fresh SQLite catalog is created, and takes keys.sqlite's rows
    assert upgraded.authenticate(f"kb_old1_{secret}") is not None
    assert upgraded.authenticate(f"kb_old1_{'t' * 24}") is None
    [listed] = upgraded.list()
    assert listed["expires_at"] is None and listed["last_used_at"] is not None


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServe]:
    process = KBServe(tmp_path_factory.mktemp("keys-home"), workers=2).start()
    yield process
    process.stop()


def _statuses(serve: KBServe, key: str, times: int = 16) -> list[int]:
    # a fresh connection per request: the kernel spreads them over both workers
    return [httpx.get(f"{serve.url}/v1/projects", headers={"Authorization": f"Bearer {key}"}).status_code
            for _ in range(times)]


def test_revocation_takes_effect_on_the_next_request_in_every_worker(serve: KBServe) -> None:
    created = kb_cli(serve.home, "keys", "create", "--name", "doomed", "--admin")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert set(_statuses(serve, key)) == {200}
    listed = {k["name"]: k for k in json.loads(kb_cli(serve.home, "keys", "list").stdout)}
    assert listed["doomed"]["last_used_at"] is not None and listed["doomed"]["expires_at"] is None
    revoked = kb_cli(serve.home, "keys", "revoke", listed["doomed"]["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert set(_statuses(serve, key)) == {401}  # at once, on both workers: caches go with the version


def test_an_expiring_key_works_until_its_time_then_gets_401(serve: KBServe) -> None:
    expires = time.time() + 4
    key = KeyStore.for_home(serve.home).create("brief", roles={"DEFAULT": "reader"}, expires_at=expires)
    assert set(_statuses(serve, key, 6)) == {200}
    listed = {k["name"]: k for k in json.loads(kb_cli(serve.home, "keys", "list").stdout)}
    assert listed["brief"]["expires_at"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(expires)))
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    answers = [httpx.get(f"{serve.url}/v1/projects", headers={"Authorization": f"Bearer {key}"}) for _ in range(8)]
    assert {a.status_code for a in answers} == {401}
    assert all("expired at" in a.json()["error"]["message"] for a in answers)
    cli_key = kb_cli(serve.home, "keys", "create", "--name", "monthly", "--admin", "--expires", "30d")
    assert cli_key.returncode == 0 and set(_statuses(serve, cli_key.stdout.strip(), 2)) == {200}
    assert kb_cli(serve.home, "keys", "create", "--name", "x", "--expires", "yesterday").returncode == 2
