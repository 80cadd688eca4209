"""The Azure AI Search side of the driver: SDK clients, the index schema, batches, errors.

Built on the official ``azure-search-documents`` SDK (SearchIndexClient for the index, SearchClient for
documents); no request is hand-made. Throttling (429) and unavailability (503) are retried by the SDK's
retry policy (azure-core RetryPolicy: exponential backoff, honours Retry-After). Indexing batches hold at
most 1000 documents and 16 MB, the service's limits; documents a batch reports as failed (a 207) with a
retryable status are sent again with backoff, and whatever still fails is reported, never dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from kb_base.errors import InvalidInputError, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

API_VERSION = "2024-07-01"
MAX_BATCH_DOCS = 1000
MAX_BATCH_BYTES = 16 * 1024 * 1024
RETRYABLE_DOC_STATUS = {409, 422, 429, 503}  # per-document statuses the service documents as transient
SEMANTIC_CONFIGURATION = "kb-semantic"
VECTOR_PROFILE = "kb-vector-profile"
HNSW_ALGORITHM = "kb-hnsw"
_FIELD_TYPES = {"s": "Edm.String", "n": "Edm.Double", "b": "Edm.Boolean"}


class AzureSearchConnection:
    """One knowledge bank's index on one Azure AI Search service."""

    def __init__(self, connection: dict[str, Any], index: str, kb_id: str) -> None:
        if not connection:
            raise InvalidInputError("an AZURE_AI_SEARCH knowledge bank needs a store connection: create one with "
                                    "client.create_connection(name, 'azure-ai-search', {'endpoint': ..., "
                                    "'api_key': ...}) and create the knowledge bank with settings={'connection': "
                                    "name}")
        if connection.get("type") not in (None, "azure-ai-search"):
            raise InvalidInputError(f"an AZURE_AI_SEARCH knowledge bank needs an 'azure-ai-search' connection, "
                                    f"not {connection.get('type')!r}")
        endpoint = connection.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise InvalidInputError("an AZURE_AI_SEARCH knowledge bank needs a connection with an 'endpoint' "
                                    "(https://<service>.search.windows.net)")
        if not connection.get("api_key") and not connection.get("azure_ad_token"):
            raise InvalidInputError("an AZURE_AI_SEARCH connection needs an 'api_key' or an 'azure_ad_token'")
        self.endpoint, self.index, self.kb_id = endpoint.rstrip("/"), index, kb_id
        self.settings = connection
        self.api_version = str(connection.get("api_version") or API_VERSION)
        self._lock = threading.Lock()
        self._index_client: Any = None
        self._search_client: Any = None
        self._fields: set[str] | None = None

    # --- clients and errors ------------------------------------------------------------------------

    def _credential(self) -> Any:
        """An admin API key, or a Microsoft Entra ID access token (sent as a bearer token, HTTPS only)."""
        if self.settings.get("api_key"):
            from azure.core.credentials import AzureKeyCredential

            return AzureKeyCredential(str(self.settings["api_key"]))
        return StaticTokenCredential(str(self.settings["azure_ad_token"]))

    def _options(self) -> dict[str, Any]:
        verify = self.settings.get("ca_bundle")  # a CA file for a private endpoint's certificate
        return {"api_version": self.api_version, **({"connection_verify": str(verify)} if verify else {}),
                "retry_total": int(self.settings.get("retry_total", 6)),
                "retry_backoff_factor": float(self.settings.get("retry_backoff_factor", 0.4)),
                "retry_backoff_max": float(self.settings.get("retry_backoff_max", 20)),
                "connection_timeout": float(self.settings.get("connect_timeout", 10)),
                "read_timeout": float(self.settings.get("timeout", 60))}

    @property
    def indexes(self) -> Any:
        with self._lock:
            if self._index_client is None:
                from azure.search.documents.indexes import SearchIndexClient

                self._index_client = SearchIndexClient(self.endpoint, self._credential(), **self._options())
            return self._index_client

    @property
    def documents(self) -> Any:
        with self._lock:
            if self._search_client is None:
                from azure.search.documents import SearchClient

                self._search_client = SearchClient(self.endpoint, self.index, self._credential(), **self._options())
            return self._search_client

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an SDK call, turning its errors into kb's (the endpoint named, never the key)."""
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        try:
            return fn(*args, **kwargs)
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise StoreUnavailableError(f"Azure AI Search at {self.endpoint} is unreachable for knowledge bank "
                                        f"{self.kb_id} ({what}): {type(exc).__name__}") from exc
        except HttpResponseError as exc:
            status = getattr(exc, "status_code", None)
            message = _service_message(exc)
            if status in (429, 502, 503, 504):
                raise StoreUnavailableError(f"Azure AI Search at {self.endpoint} answered {status} to {what} on "
                                            f"index {self.index} after retries: {message}") from exc
            if status in (401, 403):
                raise StoreUnavailableError(f"Azure AI Search at {self.endpoint} refused the credentials of "
                                            f"knowledge bank {self.kb_id} ({status})") from exc
            raise StoreError(f"Azure AI Search refused {what} on index {self.index} ({status}): {message}") from exc

    def close(self) -> None:
        with self._lock:
            for client in (self._index_client, self._search_client):
                if client is not None:
                    client.close()
            self._index_client = self._search_client = None

    # --- the index ------------------------------------------------------------------------------------

    def _definition(self, dim: int | None, extra: dict[str, str]) -> Any:
        from azure.search.documents.indexes.models import (
            HnswAlgorithmConfiguration,
            HnswParameters,
            SearchField,
            SearchIndex,
            SemanticConfiguration,
            SemanticField,
            SemanticPrioritizedFields,
            SemanticSearch,
            VectorSearch,
            VectorSearchProfile,
        )

        analyzer = self.settings.get("text_analyzer")
        fields = [
            SearchField(name="key", type="Edm.String", key=True, filterable=True, retrievable=True),
            SearchField(name="kb_id", type="Edm.String", filterable=True, sortable=True, retrievable=True),
            SearchField(name="kb_gen", type="Edm.Int64", filterable=True, retrievable=True),
            SearchField(name="kb_del", type="Edm.Int64", filterable=True, retrievable=True),
            SearchField(name="text", type="Edm.String", searchable=True, retrievable=True,
                        **({"analyzer_name": analyzer} if analyzer else {})),
            SearchField(name="meta_json", type="Edm.String", retrievable=True, searchable=False, filterable=False),
        ]
        if dim is not None:
            fields.append(SearchField(name="vector", type="Collection(Edm.Single)", searchable=True,
                                      retrievable=True, vector_search_dimensions=dim,
                                      vector_search_profile_name=VECTOR_PROFILE))
        fields += [SearchField(name=name, type=kind, filterable=True, retrievable=False)
                   for name, kind in sorted(extra.items())]
        hnsw = self.settings.get("hnsw") or {}
        return SearchIndex(
            name=self.index, fields=fields,
            vector_search=VectorSearch(
                algorithms=[HnswAlgorithmConfiguration(name=HNSW_ALGORITHM, parameters=HnswParameters(
                    m=int(hnsw.get("m", 4)), ef_construction=int(hnsw.get("ef_construction", 400)),
                    ef_search=int(hnsw.get("ef_search", 500)), metric="cosine"))],
                profiles=[VectorSearchProfile(name=VECTOR_PROFILE, algorithm_configuration_name=HNSW_ALGORITHM)]),
            semantic_search=SemanticSearch(default_configuration_name=SEMANTIC_CONFIGURATION, configurations=[
                SemanticConfiguration(name=SEMANTIC_CONFIGURATION, prioritized_fields=SemanticPrioritizedFields(
                    content_fields=[SemanticField(field_name="text")]))]),
        )

    def field_types(self) -> dict[str, str]:
        """Fields of the index as it is now on the service (name -> type); empty if it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            index = self.call("get index", self.indexes.get_index, self.index)
        except StoreError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return {}
            raise
        types = {f.name: str(f.type) for f in index.fields}
        with self._lock:
            self._fields = set(types)
        return types

    def known_fields(self, refresh: bool = False) -> set[str]:
        with self._lock:
            known = self._fields
        if known is None or refresh:
            return set(self.field_types())
        return known

    def ensure_index(self, dim: int | None, extra: dict[str, str] | None = None) -> None:
        """Create the index, or add fields to it (the vector field once the dimension is known, typed
        metadata fields as keys appear). Existing fields never change: Azure forbids it."""
        wanted_extra = dict(extra or {})
        known = self.known_fields()
        if known and (dim is None or "vector" in known) and all(n in known for n in wanted_extra):
            return  # nothing new: no call
        current = self.field_types()
        missing = (not current or (dim is not None and "vector" not in current)
                   or any(n not in current for n in wanted_extra))
        if not missing:
            return
        existing_extra = {n: t for n, t in current.items() if n.startswith("m") and n != "meta_json"}
        if current and "vector" in current and dim is None:
            dim = self.vector_dimension()
        definition = self._definition(dim, {**existing_extra, **wanted_extra})
        self.call("create or update index", self.indexes.create_or_update_index, definition)
        with self._lock:
            self._fields = {f.name for f in definition.fields}

    def vector_dimension(self) -> int | None:
        index = self.call("get index", self.indexes.get_index, self.index)
        for field in index.fields:
            if field.name == "vector":
                return int(field.vector_search_dimensions)
        return None

    def delete_index(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.call("delete index", self.indexes.delete_index, self.index)
        except StoreError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise

    # --- documents ---------------------------------------------------------------------------------------

    def write(self, action: str, documents: Sequence[dict[str, Any]]) -> None:
        """Send documents in batches within the service's limits; retry documents that failed transiently."""
        for batch in _batches(documents):
            self._write_batch(action, batch)

    def _write_batch(self, action: str, batch: list[dict[str, Any]]) -> None:
        from azure.search.documents import IndexDocumentsBatch

        pending = batch
        attempts = int(self.settings.get("document_retries", 5))
        for attempt in range(attempts + 1):
            actions = IndexDocumentsBatch()
            getattr(actions, f"add_{action}_actions")(pending)
            results = self.call(f"{action} documents", self.documents.index_documents, actions)
            by_key = {d["key"]: d for d in pending}
            failed = [r for r in results if not r.succeeded]
            if not failed:
                return
            fatal = [r for r in failed if r.status_code not in RETRYABLE_DOC_STATUS]
            if fatal or attempt == attempts:
                worst = (fatal or failed)[:3]
                raise StoreError(f"Azure AI Search rejected {len(fatal or failed)} of {len(batch)} documents "
                                 f"({action}) on index {self.index}: "
                                 + "; ".join(f"{r.key}: {r.status_code} {r.error_message}" for r in worst))
            pending = [by_key[r.key] for r in failed]
            delay = min(0.25 * 2**attempt, 8.0)
            log.warning("%d documents failed transiently on index %s; retrying in %.2fs", len(pending),
                        self.index, delay)
            time.sleep(delay)

    def search(self, **kwargs: Any) -> tuple[list[dict[str, Any]], int | None, list[Any]]:
        """(results, total count if asked, semantic answers) of one search request."""

        def run() -> tuple[list[dict[str, Any]], int | None, list[Any]]:
            paged = self.documents.search(**kwargs)
            items = list(paged)
            count = paged.get_count() if kwargs.get("include_total_count") else None
            answers = (paged.get_answers() or []) if kwargs.get("query_answer") else []
            return items, count, answers

        return self.call("search", run)


class StaticTokenCredential:
    """azure-core's TokenCredential protocol over one access token given in the connection (no refresh:
    whoever stores the connection renews the token)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.token, int(time.time()) + 3600)


def _service_message(exc: Any) -> str:
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    return str(message).splitlines()[0][:300]


def _batches(documents: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for document in documents:
        doc_size = len(json.dumps(document, ensure_ascii=False).encode()) + 64
        if batch and (len(batch) >= MAX_BATCH_DOCS or size + doc_size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += doc_size
    if batch:
        yield batch
