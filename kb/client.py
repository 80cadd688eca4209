"""The embedded client and its projects: kb's public Python API without a server.

``kb.api_client()`` returns an ``EmbeddedClient`` over ``$KB_HOME``;
``kb.api_client(url=..., api_key=...)`` returns the REST client with the same
methods. One client per process is the intended use: it caches opened
stores and embedding models, and is safe to share between threads.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb import embeddings as embedding_models
from kb.catalog import Catalog, settings_json
from kb.config import catalog_location, default_home, folders_root
from kb.embedding_cache import CachedEmbedder, EmbeddingCache
from kb.embeddings import build_model, list_model_ids
from kb.knowledge_bank import (
    KnowledgeBankHandle,
    KnowledgeBankListItem,
    check_store_type,
    default_settings,
    keyword_index_enabled,
)
from kb.llm import LLMHandle, LLMListItem
from kb.settings_checks import check_search_settings
from kb_base.errors import InvalidInputError, UnknownModelError
from kb_base.folders import ManagedFolder
from kb_base.input_checks import check_string
from stores.base import StoreContext, VectorStoreDriver
from stores.factory import driver_class, open_store
from writers.schema import validate_schema_definition

if TYPE_CHECKING:
    from kb.core import CoreKnowledgeBank

log = logging.getLogger(__name__)

DEFAULT_PROJECT_KEY = "DEFAULT"
EMBEDDING_PURPOSE = "TEXT_EMBEDDING_EXTRACTION"
SECRET_KEYS = ("api_key", "password", "token", "secret", "authorization")


_URL_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]+@")


def _masked_value(value: Any) -> Any:
    """A password inside a URL (``https://user:pw@host``, as an Elasticsearch ``url`` may carry) masked too."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    if isinstance(value, list):
        return [_masked_value(v) for v in value]
    if isinstance(value, dict):  # e.g. headers: {"Authorization": ...}
        return mask_secrets(value)
    return value


def mask_secrets(params: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(s in k.lower() for s in SECRET_KEYS) and v else _masked_value(v))
            for k, v in params.items()}


class EmbeddedClient:
    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(catalog_location(self.home))  # KB_DATABASE_URL, else SQLite in the home
        self.folders_root = folders_root()  # KB_FOLDERS_ROOT: managed folders on a shared file system
        self.catalog.ensure_project(DEFAULT_PROJECT_KEY)
        self._lock = threading.RLock()
        self._stores: dict[str, tuple[str, VectorStoreDriver]] = {}
        self._cores: dict[tuple[str, str], tuple[str, CoreKnowledgeBank]] = {}
        self._llm_handles: dict[str, Any] = {}
        self._custom_models: dict[str, Any] = {}
        self._cache: Any = None
        self._rerankers: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"EmbeddedClient(home={str(self.home)!r})"

    # --- projects -----------------------------------------------------------------------------

    def list_projects(self) -> list[dict[str, Any]]:
        return self.catalog.projects()

    def list_project_keys(self) -> list[str]:
        return [p["key"] for p in self.catalog.projects()]

    def get_project(self, project_key: str) -> Project:
        self.catalog.project(project_key)
        return Project(self, project_key)

    def create_project(self, project_key: str, name: str | None = None) -> Project:
        if name is not None:
            check_string(name, "project name")  # as the remote client checks it
        self.catalog.create_project(project_key, name)
        return Project(self, project_key)

    def get_default_project(self) -> Project:
        return Project(self, DEFAULT_PROJECT_KEY)

    # --- connections (embedding endpoints, remote stores) -------------------------------------

    def create_connection(self, name: str, type: str, params: dict[str, Any], replace: bool = False) -> None:
        """``type`` is ``openai-compatible`` (embeddings), ``chroma`` or ``elasticsearch`` (stores)."""
        if not isinstance(params, dict):
            raise InvalidInputError("connection params must be a mapping")
        self.catalog.save_connection(name, type, params, replace=replace)
        with self._lock:
            self._llm_handles.clear()

    def list_connections(self) -> list[dict[str, Any]]:
        """Connections with their secrets masked."""
        return [{"name": n, **mask_secrets(p)} for n, p in sorted(self.catalog.connections().items())]

    def delete_connection(self, name: str) -> None:
        self.catalog.connection(name)  # NotFoundError for a name that is not there, as over REST
        self.catalog.delete_connection(name)
        with self._lock:
            self._llm_handles.clear()

    # --- embedding models ---------------------------------------------------------------------

    @property
    def embedding_cache(self) -> Any:
        with self._lock:
            if self._cache is None:
                self._cache = EmbeddingCache(self.home / "cache" / "embeddings.sqlite")
            return self._cache

    def register_embedding_model(self, model: Any) -> None:
        """Add an in-process embedding model (a ``kb.embeddings.EmbeddingModel``), e.g. a LangChain adapter."""
        with self._lock:
            self._custom_models[model.id] = model
            self._llm_handles.pop(model.id, None)

    def list_llm_items(self) -> list[Any]:
        items = [LLMListItem(id=i, description=d, type=i.split(":", 1)[0], purpose=EMBEDDING_PURPOSE)
                 for i, d in list_model_ids(self.catalog.connections())]
        items += [LLMListItem(id=m.id, description=m.description, type="custom", purpose=EMBEDDING_PURPOSE)
                  for m in self._custom_models.values()]
        return items

    def get_llm_handle(self, llm_id: str) -> Any:
        with self._lock:
            handle = self._llm_handles.get(llm_id)
            if handle is None:
                if not isinstance(llm_id, str):
                    raise UnknownModelError(f"embedding model id must be a string, got {llm_id!r}")
                model = self._custom_models.get(llm_id) or build_model(llm_id, self.catalog.connections())
                handle = LLMHandle(llm_id, CachedEmbedder(model, self.embedding_cache))
                self._llm_handles[llm_id] = handle
            return handle

    # --- rerankers ----------------------------------------------------------------------------

    def reranker_for(self, settings: dict[str, Any] | None) -> Any:
        if not settings:
            return None
        import json

        key = json.dumps(settings, sort_keys=True)
        with self._lock:
            if key not in self._rerankers:
                from kb.rerank import build_reranker  # httpx (0.2 s to import): only with a reranker

                self._rerankers[key] = build_reranker(settings, self.catalog.connections())
            return self._rerankers[key]

    # --- storage ------------------------------------------------------------------------------

    def project_folder(self, project_key: str) -> Path:
        return self.home / "projects" / project_key

    def knowledge_bank_folder(self, project_key: str, kb_id: str) -> Path:
        return self.project_folder(project_key) / "knowledge-banks" / kb_id

    def core_knowledge_bank(self, project_key: str, kb_id: str) -> CoreKnowledgeBank:
        """A core handle kept across calls while the knowledge bank's settings stay the same (for services).

        A handle built per request re-reads the project and the settings and rebuilds its search context;
        the kept one costs one indexed catalog lookup, which also sees changes made by other processes.
        """
        stored = self.catalog.knowledge_bank_settings_text(project_key, kb_id)
        cached = self._cores.get((project_key, kb_id))
        if stored is not None and cached is not None and cached[0] == stored:
            return cached[1]
        core = self.get_project(project_key).get_knowledge_bank(kb_id).as_core_knowledge_bank()
        if stored is not None:
            if len(self._cores) >= 1024:  # bounded for services with very many knowledge banks
                self._cores.clear()
            self._cores[(project_key, kb_id)] = (stored, core)
        return core

    def cached_store(self, kb_id: str) -> VectorStoreDriver | None:
        """The driver this client holds open for a knowledge bank, if any (no locking: a dict read)."""
        cached = self._stores.get(kb_id)
        return cached[1] if cached is not None else None

    def store_for(self, project_key: str, kb_id: str, settings: dict[str, Any]) -> VectorStoreDriver:
        import json

        key = json.dumps({k: settings.get(k) for k in ("vector_store_type", "store", "connection", "keyword")},
                         sort_keys=True)
        with self._lock:
            cached = self._stores.get(kb_id)
            if cached is not None and cached[0] == key:
                return cached[1]
            if cached is not None:
                cached[1].close()
            connection = self.catalog.connection(settings["connection"]) if settings.get("connection") else {}
            context = StoreContext(
                kb_id=kb_id,
                folder=self.knowledge_bank_folder(project_key, kb_id),
                settings=dict(settings.get("store") or {}),
                connection=connection,
                keyword_analyzer=dict((settings.get("keyword") or {}).get("analyzer") or {}),
                keyword_index=keyword_index_enabled(settings),
                metadata_schema=dict(settings.get("metadata_schema") or {}),
            )
            driver = open_store(settings["vector_store_type"], context)
            self._stores[kb_id] = (key, driver)
            return driver

    def resolve_folder(self, ref: str, default_project: str) -> ManagedFolder:
        if not isinstance(ref, str) or not ref:
            raise InvalidInputError(f"folder reference must be '<PROJECT>.<folder id>', got {ref!r}")
        project_key, _, folder_ref = ref.rpartition(".")
        project_key = project_key or default_project
        info = self.catalog.managed_folder(project_key, folder_ref)
        base = self.folders_root / project_key if self.folders_root else self.project_folder(project_key) / "folders"
        root = base / info["id"]
        return ManagedFolder(project_key, info["id"], info["name"], root)

    # --- knowledge banks (used by Project and the handles) ------------------------------------

    def create_knowledge_bank(self, project_key: str, name: str, embedding_llm_id: str | None = None,
                              vector_store_type: str = "FAISS", settings: dict[str, Any] | None = None) -> str:
        """The new knowledge bank's id (``project.create_knowledge_bank`` returns its handle)."""
        # read at call time: the default may change between releases, never for an existing knowledge bank
        embedding_llm_id = embedding_llm_id or embedding_models.DEFAULT_EMBEDDING_LLM_ID
        store_type = check_store_type(vector_store_type)
        self.get_llm_handle(embedding_llm_id)  # UnknownModelError before anything is written
        raw = default_settings(embedding_llm_id, store_type)
        raw.update(settings or {})
        raw["metadata_schema"] = validate_schema_definition(raw.get("metadata_schema"))
        self._check_store_settings(raw)
        self._check_search_settings(raw, f"knowledge bank {name!r}")
        kb_id = self.catalog.create_knowledge_bank(project_key, name, raw)
        try:
            self.store_for(project_key, kb_id, raw)
        except BaseException:
            self.catalog.delete_knowledge_bank(project_key, kb_id)
            shutil.rmtree(self.knowledge_bank_folder(project_key, kb_id), ignore_errors=True)
            raise
        log.info("created knowledge bank %s.%s (%s, %s, %s)", project_key, kb_id, name, store_type, embedding_llm_id)
        return kb_id

    def _check_store_settings(self, raw: dict[str, Any]) -> None:
        driver_class(raw["vector_store_type"]).check_settings(raw.get("store") or {})
        if not keyword_index_enabled(raw) and raw["vector_store_type"] != "FAISS":
            raise InvalidInputError("the keyword index can only be turned off on FAISS knowledge banks "
                                    f"(this one is {raw['vector_store_type']})")
        if raw.get("connection"):
            self.catalog.connection(raw["connection"])

    def _check_search_settings(self, raw: dict[str, Any], owner: str) -> None:
        # the values' own checks first (the catalog's, as the remote client runs them), then what a search needs
        settings_json(raw, owner)
        check_search_settings(self, raw)

    def save_knowledge_bank_settings(self, project_key: str, kb_id: str, raw: dict[str, Any]) -> None:
        current = self.catalog.knowledge_bank(project_key, kb_id)["settings"]
        raw["metadata_schema"] = validate_schema_definition(raw.get("metadata_schema"))
        raw["vector_store_type"] = check_store_type(raw.get("vector_store_type"))
        self.get_llm_handle(raw.get("embedding_llm_id"))
        if raw.get("images_folder"):
            self.resolve_folder(raw["images_folder"], default_project=project_key)
        self._check_store_settings(raw)
        self._check_search_settings(raw, f"knowledge bank {kb_id!r}")
        changed_engine = any(raw.get(k) != current.get(k) for k in ("embedding_llm_id", "vector_store_type",
                                                                     "connection"))
        if changed_engine and self.store_for(project_key, kb_id, current).count() > 0:
            raise InvalidInputError(
                "the embedding model, store type or connection of a non-empty knowledge bank cannot change: "
                "clear it first, or create a new knowledge bank"
            )
        retyped = {k: (t, raw["metadata_schema"][k]) for k, t in (current.get("metadata_schema") or {}).items()
                   if k in raw["metadata_schema"] and raw["metadata_schema"][k] != t}
        if retyped and self.store_for(project_key, kb_id, current).count() > 0:
            key, (was, now) = next(iter(retyped.items()))
            raise InvalidInputError(f"metadata key {key!r} is {was} in this non-empty knowledge bank: as {now}, "
                                    f"filters on it would never match the values already stored; clear it first, "
                                    "or add a new key")
        if keyword_index_enabled(raw) != keyword_index_enabled(current) and \
                self.store_for(project_key, kb_id, current).count() > 0:
            raise InvalidInputError("the keyword index of a non-empty knowledge bank cannot be turned on or off: "
                                    "clear it first, or create a new knowledge bank")
        store = driver_class(raw["vector_store_type"])
        if raw.get("store") != current.get("store") and self.store_for(project_key, kb_id, current).count() > 0:
            store.check_settings_change(current.get("store") or {}, raw.get("store") or {})
        self.catalog.save_knowledge_bank_settings(project_key, kb_id, raw)

    def delete_knowledge_bank(self, project_key: str, kb_id: str) -> None:
        info = self.catalog.knowledge_bank(project_key, kb_id)
        driver = self.store_for(project_key, kb_id, info["settings"])
        driver.destroy()
        with self._lock:
            self._stores.pop(kb_id, None)
        self.catalog.delete_knowledge_bank(project_key, kb_id)
        shutil.rmtree(self.knowledge_bank_folder(project_key, kb_id), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for _, driver in self._stores.values():
                driver.close()
            self._stores.clear()
        self.catalog.close()

    def __enter__(self) -> EmbeddedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Project:
    def __init__(self, client: EmbeddedClient, project_key: str) -> None:
        self.client = client
        self.project_key = project_key

    def __repr__(self) -> str:
        return f"Project({self.project_key!r})"

    # --- embedding models ---------------------------------------------------------------------

    def list_llms(self, purpose: str | None = None) -> list[Any]:
        items = self.client.list_llm_items()
        if purpose is not None and purpose != EMBEDDING_PURPOSE:
            return []  # kb only serves embedding models
        return items

    def get_llm(self, llm_id: str) -> Any:
        return self.client.get_llm_handle(llm_id)

    # --- knowledge banks ----------------------------------------------------------------------

    def list_knowledge_banks(self, as_type: str = "listitems") -> list[Any]:
        items = [KnowledgeBankListItem(i["id"], i["name"], self.project_key, i["settings"]["vector_store_type"],
                                       i["settings"]["embedding_llm_id"], self.client)
                 for i in self.client.catalog.knowledge_banks(self.project_key)]
        if as_type == "objects":
            return [i.to_knowledge_bank() for i in items]
        return items

    def get_knowledge_bank(self, kb_id: str) -> KnowledgeBankHandle:
        return KnowledgeBankHandle(self.client, self.project_key, kb_id)

    def create_knowledge_bank(self, name: str, embedding_llm_id: str | None = None, vector_store_type: str = "FAISS",
                              settings: dict[str, Any] | None = None) -> KnowledgeBankHandle:
        kb_id = self.client.create_knowledge_bank(self.project_key, name, embedding_llm_id,
                                                  vector_store_type, settings)
        return KnowledgeBankHandle(self.client, self.project_key, kb_id)

    # --- managed folders ----------------------------------------------------------------------

    def create_managed_folder(self, name: str) -> ManagedFolder:
        folder_id = self.client.catalog.create_managed_folder(self.project_key, name)
        return self.get_managed_folder(folder_id)

    def get_managed_folder(self, folder_ref: str) -> ManagedFolder:
        return self.client.resolve_folder(f"{self.project_key}.{folder_ref}", default_project=self.project_key)

    def list_managed_folders(self) -> list[dict[str, Any]]:
        return self.client.catalog.managed_folders(self.project_key)

    def delete_managed_folder(self, folder_ref: str) -> None:
        folder = self.get_managed_folder(folder_ref)
        self.client.catalog.delete_managed_folder(self.project_key, folder.id)
        shutil.rmtree(folder.root, ignore_errors=True)

    def delete(self) -> None:
        if self.project_key == DEFAULT_PROJECT_KEY:
            raise InvalidInputError("the default project cannot be deleted")
        self.client.catalog.project(self.project_key)  # NotFoundError when already gone, as over REST
        self.client.catalog.delete_project(self.project_key)


def api_client(url: str | None = None, api_key: str | None = None, home: str | Path | None = None) -> Any:
    """The embedded client, or with ``url`` the REST client of a kb server."""
    if url is None:
        return EmbeddedClient(home)
    from kb.remote import RemoteClient  # httpx (0.2 s to import): only for a server

    return RemoteClient(url, api_key=api_key)
