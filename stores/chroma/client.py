"""How the Chroma driver reaches Chroma: an embedded PersistentClient or a Chroma server over HTTP.

Errors. A server that cannot be reached (refused, reset, timed out) is a
``StoreUnavailableError`` naming the URL; anything else Chroma answers with is
a ``StoreError``. HTTP calls get a timeout (Chroma's own client has none, so
a frozen server would hang a request forever).

Embedded mode and several processes. A PersistentClient keeps the HNSW index
in memory and does not see vectors another process adds later (measured with
chromadb 1.5.9: a long-lived client found 0 of 30 records another process had
written; a fresh client found all 30). kb's commit point tells when that
happened: every process remembers the generation its client reflects, and a
process that meets a newer committed generation it did not write itself
reopens its client before reading or writing. One client per folder is shared
by every driver of the process (Chroma allows one per path and process).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from kb_base.errors import FilterError, InvalidInputError, StoreError, StoreUnavailableError

DEFAULT_TIMEOUT = 30.0
# What Chroma says when it cannot load a collection's HNSW segment (files torn by a kill mid-persist, chromadb
# 1.5: "Error constructing hnsw segment reader: ... Error deserializing pickle file", "Error loading hnsw index").
_DAMAGED = re.compile(r"hnsw segment|hnsw index|pickle file|getting embedding", re.IGNORECASE)


class DamagedIndexError(StoreError):
    """Chroma cannot load a collection's vector index: its files were damaged (torn by a crash mid-write)."""
_CONNECTION_KEYS = {"type", "url", "tenant", "database", "api_key", "timeout"}


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False)


class _Embedded:
    """This process's one PersistentClient for a folder, and the generation it is known to reflect."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()  # a failed open forgets the collections while holding it
        self.client: Any = None
        self.collections: dict[str, Any] = {}
        self.known: int | None = None
        self.retired: Any = None  # the chromadb System of the client before the current one

    def open(self) -> None:
        import chromadb
        from chromadb.api.shared_system_client import SharedSystemClient

        if self.client is not None:
            # Drop chromadb's per-path cache entry so that the next client loads the index from disk. The
            # old client keeps serving reads already under way in other threads; it is stopped at the next
            # reopen, long after those finished (each reopen would otherwise keep ~0.3-2 MB alive).
            with SharedSystemClient._refcount_lock:
                system = SharedSystemClient._identifier_to_system.pop(str(self.path), None)
                SharedSystemClient._identifier_to_refcount.pop(str(self.path), None)
            if self.retired is not None:
                self.retired.stop()
            self.retired = system
        self.client = chromadb.PersistentClient(path=str(self.path), settings=_settings())
        self.collections = {}


_EMBEDDED: dict[Path, _Embedded] = {}
_EMBEDDED_LOCK = threading.Lock()


def _embedded(path: Path) -> _Embedded:
    with _EMBEDDED_LOCK:
        if path not in _EMBEDDED:
            _EMBEDDED[path] = _Embedded(path)
        return _EMBEDDED[path]


def check_connection(connection: dict[str, Any]) -> dict[str, Any]:
    unknown = set(connection) - _CONNECTION_KEYS
    if unknown:
        raise InvalidInputError(f"unknown Chroma connection settings: {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(sorted(_CONNECTION_KEYS))}")
    if connection.get("type", "chroma") != "chroma":
        raise InvalidInputError(f"a Chroma knowledge bank needs a chroma connection, not {connection['type']!r}")
    url = urlparse(str(connection.get("url", "")))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InvalidInputError(f"Chroma connection url must be http(s)://host:port, got {connection.get('url')!r}")
    timeout = connection.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
        raise InvalidInputError(f"Chroma connection timeout must be a number of seconds in (0, 3600], got {timeout!r}")
    for key in ("tenant", "database", "api_key"):
        if key in connection and not isinstance(connection[key], str):
            raise InvalidInputError(f"Chroma connection {key} must be a string")
    return connection


class ChromaClient:
    """Collections by name, and every Chroma call with its errors mapped to kb's."""

    def __init__(self, folder: Path, connection: dict[str, Any], kb_id: str) -> None:
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        self.kb_id = kb_id
        self.connection = check_connection(dict(connection)) if connection else {}
        self.embedded = None if self.connection else _embedded(folder.resolve())
        url = urlparse(self.connection.get("url", ""))
        # Said in errors: scheme, host and port only (a URL may carry credentials).
        self.where = f"{url.scheme}://{url.hostname}:{url.port or ''}".rstrip(":") if self.connection else str(folder)
        self._lock = threading.RLock()  # a failed connect forgets the client while holding it
        self._http: Any = None
        self._collections: dict[str, Any] = {}

    # --- clients -----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self.embedded is not None:
            with self.embedded.lock:
                if self.embedded.client is None:
                    self._guard(self.embedded.open)
                return self.embedded.client
        with self._lock:
            if self._http is None:
                self._http = self._guard(self._open_http)
            return self._http

    def _open_http(self) -> Any:
        import chromadb

        url = urlparse(self.connection["url"])
        timeout = float(self.connection.get("timeout", DEFAULT_TIMEOUT))
        base = f"{url.scheme}://{url.hostname}:{url.port or (443 if url.scheme == 'https' else 8000)}"
        headers = {"Authorization": f"Bearer {self.connection['api_key']}"} if self.connection.get("api_key") else None
        # chromadb's constructor talks to the server without a timeout: check it answers first.
        httpx.get(f"{base}/api/v2/heartbeat", timeout=timeout, headers=headers).raise_for_status()
        client = chromadb.HttpClient(host=url.hostname or "127.0.0.1", port=url.port or 8000,
                                     ssl=url.scheme == "https", headers=headers, settings=_settings(),
                                     tenant=self.connection.get("tenant", chromadb.DEFAULT_TENANT),
                                     database=self.connection.get("database", chromadb.DEFAULT_DATABASE))
        session = getattr(getattr(client, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):  # chromadb creates it with timeout=None
            session.timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        return client

    def refresh(self, committed: int) -> None:
        """Embedded: reopen the client if another process committed since it was loaded. A snapshot older than
        the client needs none: the client has every record that generation still has (a reader lapped by two
        commits reads again anyway: stores/generations.py, ``lapped``). Reopening for it, as this did, made
        readers that straddle a commit reopen by turns, and each reopen stops the client before the last, which
        another thread's read may still be using."""
        embedded = self.embedded
        if embedded is None or (embedded.known is not None and committed <= embedded.known):
            return
        with embedded.lock:
            if embedded.client is None or embedded.known is None or committed > embedded.known:
                self._guard(embedded.open)  # opened after ``committed`` was read, so it reflects it
                embedded.known = committed

    def forget_generation(self) -> None:
        """Embedded: the knowledge bank in this folder was deleted; a new one there starts again at generation 0,
        so the next read reopens the client whatever generation it reads."""
        if self.embedded is not None:
            with self.embedded.lock:
                self.embedded.known = None

    def committed(self, previous: int, generation: int) -> None:
        """This process committed ``generation`` on top of ``previous``: its client reflects it."""
        embedded = self.embedded
        if embedded is not None:
            with embedded.lock:
                if embedded.known == previous:
                    embedded.known = generation

    def reopen(self, committed: int) -> None:
        """Embedded: a fresh client, which loads every index from disk again (and reflects ``committed``)."""
        if self.embedded is not None:
            with self.embedded.lock:
                self._guard(self.embedded.open)
                self.embedded.known = committed

    def forget(self) -> None:
        """Drop cached clients and collections (after a connection failure, or to reload)."""
        if self.embedded is not None:
            with self.embedded.lock:
                self.embedded.collections = {}
        with self._lock:
            self._http = None
            self._collections = {}

    # --- collections ---------------------------------------------------------------------------

    def _cache(self) -> dict[str, Any]:
        return self.embedded.collections if self.embedded is not None else self._collections

    def collection(self, name: str, create: bool = False, configuration: dict[str, Any] | None = None) -> Any:
        cache = self._cache()
        found = cache.get(name)
        if found is None:
            client = self.client
            if create:
                found = self._guard(lambda: client.get_or_create_collection(
                    name, configuration=configuration, embedding_function=None))
            else:
                found = self._guard(lambda: client.get_collection(name, embedding_function=None), name)
            self._cache()[name] = found
        return found

    def delete_collection(self, name: str) -> None:
        """Delete a collection; one that does not exist is already gone."""
        from chromadb.errors import NotFoundError

        self._cache().pop(name, None)
        client = self.client

        def drop() -> None:
            try:
                client.delete_collection(name)
            except (NotFoundError, ValueError):
                pass

        self._guard(drop)

    def call(self, name: str, method: str, **kwargs: Any) -> Any:
        collection = self.collection(name)
        return self._guard(lambda: getattr(collection, method)(**kwargs), name)

    # --- errors ---------------------------------------------------------------------------------

    def _guard(self, action: Any, collection: str | None = None) -> Any:
        from chromadb.errors import ChromaError, NotFoundError

        try:
            return action()
        except (InvalidInputError, FilterError, StoreUnavailableError):
            raise
        except (httpx.TransportError, httpx.HTTPStatusError, ConnectionError) as exc:
            self.forget()
            raise StoreUnavailableError(f"Chroma at {self.where} is unavailable for knowledge bank {self.kb_id}: "
                                        f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        except NotFoundError as exc:
            self.forget()
            if collection is not None:
                raise StoreUnavailableError(
                    f"Chroma at {self.where} has no collection {collection!r} for knowledge bank {self.kb_id}: it "
                    "was deleted outside kb or the server lost its data") from exc
            raise StoreUnavailableError(f"Chroma at {self.where}: {str(exc)[:300]} (check the connection's tenant "
                                        "and database)") from exc
        except (ChromaError, ValueError) as exc:
            self._raise_if_damaged(exc, collection)
            raise StoreError(f"Chroma at {self.where} refused a request for knowledge bank {self.kb_id}: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        except Exception as exc:
            if type(exc) is Exception:  # chromadb's HTTP client raises bare Exception(response text)
                self._raise_if_damaged(exc, collection)
                raise StoreError(f"Chroma at {self.where} answered: {str(exc)[:300]}") from exc
            raise

    def _raise_if_damaged(self, exc: Exception, collection: str | None) -> None:
        if _DAMAGED.search(str(exc)):
            raise DamagedIndexError(
                f"Chroma at {self.where} cannot load the vector index of collection {collection!r} of knowledge bank "
                f"{self.kb_id} (its HNSW files were damaged, as by a crash while Chroma wrote them): "
                f"{type(exc).__name__}: {str(exc)[:300]}; `kb repair` rebuilds it from kb's copy") from exc
