"""The core handle of a knowledge bank: search it, write to it, use it from LangChain."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from kb.catalog_db.sync_records import DatabaseSyncRecords
from kb.search import SearchContext, execute_search
from kb_base import events
from kb_base.documents import document_of
from kb_base.errors import AlreadyExistsError, ImageNotFoundError, InvalidInputError, NotFoundError
from kb_base.filters import Filter, parse_filter
from kb_base.folders import ManagedFolder
from kb_base.input_checks import MAX_TEXT_CHARS, check_ids, check_text, check_write_ids, string_problem
from kb_base.search import SearchRequest, SearchResult, check_count, image_paths_of
from stores.base import Record, StoreReader, StoreTransaction, VectorStoreDriver
from stores.langchain import KBRetriever, KBVectorStore
from stores.record_batch import RecordBatch
from stores.record_checks import plain_metadata_json
from writers.batch_checks import plain_metadata_batch, suspect_texts
from writers.schema import plain_metadata, validate_filter, validate_metadata
from writers.sync import SyncOptions, SyncReport, sync_folder
from writers.sync_records import SyncRecords, SyncRecordStore
from writers.writer import KnowledgeBankWriter

if TYPE_CHECKING:  # the client imports this module to hand out knowledge banks
    from kb.client import EmbeddedClient
    from writers.engines import Engine  # (the engines import pyarrow: only a sync with one loads them)

log = logging.getLogger(__name__)


def _store_label(reader: Any) -> str:
    """The store type of a driver, or of the store a writer's transaction writes to."""
    return getattr(reader, "store_type", None) or getattr(getattr(reader, "store", None), "store_type", "unknown")


class CoreKnowledgeBank:
    """What ``handle.as_core_knowledge_bank()`` returns (``dataiku.KnowledgeBank`` in the reference)."""

    def __init__(self, client: EmbeddedClient, project_key: str, kb_id: str) -> None:
        self._client = client
        self.project_key = project_key
        self.id = kb_id
        info = client.catalog.knowledge_bank(project_key, kb_id)
        self.name: str = info["name"]
        self.settings: dict[str, Any] = info["settings"]
        # per-search work done once per settings object (refresh() replaces it): the driver and search context
        self._driver_memo: tuple[dict[str, Any], VectorStoreDriver] | None = None
        self._context_memo: tuple[dict[str, Any], SearchContext] | None = None

    def __repr__(self) -> str:
        return f"CoreKnowledgeBank({self.project_key}.{self.id}, name={self.name!r})"

    # --- parts --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the settings (another handle may have saved new ones)."""
        self.settings = self._client.catalog.knowledge_bank(self.project_key, self.id)["settings"]

    @property
    def folder(self) -> Path:
        return self._client.knowledge_bank_folder(self.project_key, self.id)

    @property
    def driver(self) -> VectorStoreDriver:
        memo = self._driver_memo
        # the client may have replaced the driver (another handle saved new store settings): ask it again then
        if memo is not None and memo[0] is self.settings and self._client.cached_store(self.id) is memo[1]:
            return memo[1]
        driver = self._client.store_for(self.project_key, self.id, self.settings)
        self._driver_memo = (self.settings, driver)
        return driver

    def check_store(self, full: bool = False) -> dict[str, Any]:
        """``kb doctor``: the store against the commit point (count, every committed record readable, vector
        search finding records by their own vector: a sample, or all when ``full``); problems are listed."""
        return self.driver.check(full=full).as_dict()

    def repair_store(self) -> dict[str, Any]:
        """``kb repair``: rebuild what the check finds damaged, where the store allows (Chroma: from kb's copy
        of every record), then check again."""
        return self.driver.repair().as_dict()

    @property
    def schema(self) -> dict[str, str]:
        return dict(self.settings.get("metadata_schema") or {})

    @property
    def embedding_llm_id(self) -> str:
        return str(self.settings["embedding_llm_id"])

    def langchain_embeddings(self) -> Embeddings:
        return self._client.get_llm_handle(self.embedding_llm_id).as_langchain_embeddings()

    def embedder(self) -> Any:
        """The embedding model behind this knowledge bank, with the embedding cache in front of it."""
        return self._client.get_llm_handle(self.embedding_llm_id).embedder

    # --- reading ------------------------------------------------------------------------------

    def check_filter(self, flt: Filter | None) -> Filter | None:
        return validate_filter(self.schema, flt)

    def search_context(self) -> SearchContext:
        memo = self._context_memo
        if memo is not None and memo[0] is self.settings:
            return memo[1]
        search_settings = self.settings.get("search") or {}
        context = SearchContext(
            # resolved on first use: keyword search never needs (or loads) the embedding model
            embed_query=lambda text: np.asarray(self.embedder().embed_query(text), dtype=np.float32),
            check_filter=self.check_filter,
            fusion=search_settings.get("fusion") or {},
            reranker=self._client.reranker_for(search_settings.get("reranker")),
            keyword_available=self.driver.capabilities.keyword,
        )
        self._context_memo = (self.settings, context)
        return context

    def search(self, request: SearchRequest | None = None, reader: StoreReader | None = None,
               **kwargs: Any) -> list[SearchResult]:
        """Run a search. ``core.search(query="...", k=5, search_type="hybrid", filter={...})``.

        Keyword arguments that name no ``k`` or ``search_type`` get the knowledge bank's search settings
        (``default_k``, ``default_search_type``), as over REST; a ``SearchRequest`` is taken as it is."""
        if request is None:
            defaults = self.settings.get("search") or {}
            for name, setting in (("k", "default_k"), ("search_type", "default_search_type")):
                if name not in kwargs and defaults.get(setting):
                    kwargs[name] = defaults[setting]
            request = SearchRequest(**kwargs)
        started = time.perf_counter()
        reader = reader or self.driver
        results = execute_search(reader, request, self.search_context())
        events.emit("search", search_type=request.search_type, store=_store_label(reader),
                    seconds=time.perf_counter() - started)
        return results

    def similarity_documents(self, vector: Sequence[float], k: int, filter: Mapping[str, Any] | None = None,
                             reader: StoreReader | None = None) -> list[tuple[Document, float]]:
        """``search(vector=..., search_type="similarity")`` as LangChain documents and scores, without the
        general request, result and conversion layers (a third of kb's own time in a 10k search)."""
        check_count("k", k)
        started = time.perf_counter()
        flt = self.check_filter(parse_filter(filter)) if filter else None
        reader = reader or self.driver
        rows = reader.similarity_rows(vector, k, flt)  # type: ignore[arg-type]
        if events.observed():
            events.emit("search", search_type="similarity", store=_store_label(reader),
                        seconds=time.perf_counter() - started)
        return [(document_of(text, metadata, doc_id), score) for doc_id, text, metadata, score in rows]

    def searches_quickly(self, request: SearchRequest) -> bool:
        """Whether ``search(request)`` is short CPU work: a query vector (no model), no keyword or reranking
        stage, and a store that answers from memory now. A service runs such searches on its event loop
        (a thread hop and the GIL hand-offs it causes cost more than the search) and the rest in threads."""
        if request.vector is None or request.search_type not in ("similarity", "similarity_score_threshold", "mmr"):
            return False
        driver = self._client.cached_store(self.id)  # never opens a store here: opening may do I/O
        return driver is not None and driver.answers_quickly(filtered=request.filter is not None)

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return self.driver.count(self.check_filter(parse_filter(filter)))

    def index_info(self) -> dict[str, Any]:
        """The vector index's type and its memory and disk use (``kb info``; GET .../index over REST)."""
        return self.driver.index_info()

    def get_documents(self, ids: Sequence[str], tx: StoreTransaction | None = None) -> list[Document]:
        reader = tx or self.driver
        ids = check_ids(ids)
        return [Document(page_content=r.text, metadata=r.metadata, id=r.id) for r in reader.get(list(ids))]

    # --- writing ------------------------------------------------------------------------------

    def prepare_records(self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None],
                        ids: Sequence[str], vectors: Sequence[Sequence[float]] | None = None) -> Sequence[Record]:
        """Validate everything (schema included) and embed; nothing is written here."""
        if not (len(texts) == len(metadatas) == len(ids)) or (vectors is not None and len(vectors) != len(texts)):
            raise InvalidInputError("texts, metadatas, ids (and vectors) must have the same length")
        check_write_ids(ids)
        checked, encoded = self._checked_documents(texts, metadatas, ids)
        if vectors is None:
            matrix = self.embedder().embed_documents(list(texts)) if texts else np.zeros((0, 0), np.float32)
        else:
            matrix = self._given_vectors(vectors, ids)
        if isinstance(matrix, np.ndarray) and matrix.ndim == 2:
            return RecordBatch(ids, texts, checked, encoded, matrix)  # columns: a store may take them whole
        if checked is None:
            checked = [orjson.loads(e) for e in encoded]  # type: ignore[arg-type]
        return [Record(i, t, m, v, e) for i, t, m, v, e in zip(ids, texts, checked, matrix, encoded, strict=True)]

    def _checked_documents(self, texts: Sequence[Any], metadatas: Sequence[Any], ids: Sequence[str]
                           ) -> tuple[list[dict[str, Any]] | None, list[str | None]]:
        """Each document's checked metadata and, where the check also encoded it, its JSON (the metadata None:
        all encoded, the JSON is the metadata); raises naming the first bad document. A batch is checked column
        by column (``writers.batch_checks``); the documents that leaves in doubt, or every one if the metadata
        is not all plain, are checked one at a time."""
        schema = self.schema
        plain: list[str | None] | None = plain_metadata_batch(schema, metadatas)  # type: ignore[assignment]
        if plain is not None:
            for position in sorted(suspect_texts(texts)):
                self._check_text(texts[position], ids[position], position)
            return None, plain
        checked: list[dict[str, Any]] = []
        encoded: list[str | None] = []
        for position, (doc_id, text, metadata) in enumerate(zip(ids, texts, metadatas, strict=True)):
            if type(text) is str and type(metadata) is dict and len(text) <= MAX_TEXT_CHARS and \
                    string_problem(text) is None:
                flat = plain_metadata(schema, metadata)
                # the common case, without building a label or walking the slow path; orjson refuses what
                # plain_metadata leaves to it (lone surrogates), which then takes the slow path and its error
                encoded_one = plain_metadata_json(flat) if flat is not None else None
                if encoded_one is not None:
                    checked.append(flat)
                    encoded.append(encoded_one)
                    continue
            encoded.append(None)
            label = self._check_text(text, doc_id, position)
            if metadata is not None and not isinstance(metadata, Mapping):
                raise InvalidInputError(f"{label}: metadata must be a mapping")
            checked.append(validate_metadata(schema, metadata or {}, label))
        return checked, encoded

    @staticmethod
    def _check_text(text: Any, doc_id: str, position: int) -> str:
        """The document's label for error messages, once its text is known to be storable."""
        label = f"document {doc_id!r} (position {position})"
        if not isinstance(text, str):
            raise InvalidInputError(f"{label}: page_content must be a string, got {type(text).__name__}")
        check_text(text, f"{label}: page_content")
        return label

    def _given_vectors(self, vectors: Sequence[Sequence[float]], ids: Sequence[str]) -> np.ndarray | list[np.ndarray]:
        """Precomputed vectors as float32, their sizes checked against the embedding model's dimension."""
        expected = getattr(self.embedder().model, "dimension", None)
        try:
            # one conversion for the whole batch; ragged input (an error, found below) cannot be one matrix
            matrix = np.asarray(vectors, dtype=np.float32)
        except (ValueError, TypeError):
            matrix = None
        if matrix is not None and matrix.ndim == 2 and (expected is None or matrix.shape[1] == expected):
            return matrix
        for position, vector in enumerate(vectors):
            size = np.asarray(vector).size
            if expected is not None and size != expected:
                raise InvalidInputError(f"document {ids[position]!r} (position {position}): vector has {size} "
                                        f"dimensions, the embedding model {self.embedding_llm_id} makes {expected}")
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    def write_texts(self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None], ids: Sequence[str],
                    vectors: Sequence[Sequence[float]] | None = None, tx: StoreTransaction | None = None) -> None:
        records = self.prepare_records(texts, metadatas, ids, vectors)
        if tx is not None:
            tx.upsert(records)
            return
        with self.driver.begin() as own:
            own.upsert(records)

    def delete_documents(self, ids: Sequence[str], tx: StoreTransaction | None = None) -> int:
        ids = check_ids(ids)
        if tx is not None:
            return tx.delete(ids)
        with self.driver.begin() as own:
            return own.delete(ids)

    def get_writer(self, timeout: float = 30.0) -> KnowledgeBankWriter:
        """A context manager that commits everything written in its block at once, or nothing."""

        self.refresh()
        return KnowledgeBankWriter(self, timeout=timeout)

    def sync_folder(self, folder: ManagedFolder | str | Path, extraction: str = "raw", screenshots: bool = False,
                    progress: bool = False, engine: Engine | None = None, **options: Any) -> SyncReport:
        """Make this knowledge bank hold exactly the documents of ``folder`` (a managed folder or a local
        directory): see ``writers.sync``. ``options`` are the other ``writers.sync.SyncOptions`` fields;
        ``engine=kb.RayEngine(address=...)`` extracts and embeds on a Ray cluster, with the same result."""

        settings = SyncOptions.from_mapping({"extraction": extraction, "screenshots": screenshots, **options})
        return sync_folder(self, folder, settings, progress=progress, engine=engine)

    # --- LangChain ----------------------------------------------------------------------------

    def as_langchain_vectorstore(self, **kwargs: Any) -> VectorStore:
        """The KB as a LangChain vector store; its class depends on the store (FAISS for FAISS)."""
        return self.langchain_vectorstore(None, **kwargs)

    def langchain_vectorstore(self, tx: StoreTransaction | None, **kwargs: Any) -> VectorStore:
        factory = getattr(self.driver, "langchain_vectorstore", None)
        if factory is not None:  # the store's own LangChain class (FAISS, Chroma, ...)
            return factory(self, tx, **kwargs)
        if kwargs:
            raise InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        return KBVectorStore(self, tx)

    def as_langchain_retriever(self, search_type: str = "similarity", search_kwargs: dict[str, Any] | None = None,
                               vectorstore_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> KBRetriever:
        store = self.as_langchain_vectorstore(**(vectorstore_kwargs or {}))
        retriever = store.as_retriever(search_type=search_type, search_kwargs=dict(search_kwargs or {}), **kwargs)
        return retriever  # type: ignore[return-value]

    # --- multimodal content -------------------------------------------------------------------

    def images_folder(self) -> ManagedFolder:
        ref = self.settings.get("images_folder")
        if not ref:
            raise NotFoundError(
                f"knowledge bank {self.id} has no images folder; set one with settings.set_images_folder"
            )
        return self._client.resolve_folder(ref, default_project=self.project_key)

    def sync_records(self) -> SyncRecordStore:
        """Folder sync's records: in the catalog database when several servers share it (a sync on any of
        them must see what the others indexed), else ``sync.sqlite`` in this knowledge bank's folder."""
        if self._client.catalog.shared:
            return DatabaseSyncRecords(self._client.catalog.database, self.id)
        return SyncRecords(self.folder / "sync.sqlite")

    def ensure_images_folder(self) -> ManagedFolder:
        """The images folder, created (``<kb name> pages``) and saved in the settings if missing."""
        self.refresh()
        if self.settings.get("images_folder"):
            return self.images_folder()
        project = self._client.get_project(self.project_key)
        try:
            folder = project.create_managed_folder(f"{self.name} pages")
        except AlreadyExistsError:
            folder = project.create_managed_folder(f"{self.name} pages {self.id}")
        settings = project.get_knowledge_bank(self.id).get_settings()
        settings.set_images_folder(f"{self.project_key}.{folder.id}")
        settings.save()
        self.refresh()
        return folder

    def get_images(self, item: Document | SearchResult | Mapping[str, Any]) -> list[bytes]:
        """The image bytes a document's retrieval content points at, read from the images folder."""
        metadata = item.metadata if isinstance(item, Document | SearchResult) else item
        paths = image_paths_of(metadata)
        if not paths:
            return []
        folder = self.images_folder()
        images = []
        for path in paths:
            try:
                images.append(folder.read(path))
            except NotFoundError as exc:
                raise ImageNotFoundError(
                    f"image {path!r} of a search result is not in images folder {folder.full_id} "
                    f"of knowledge bank {self.id}"
                ) from exc
        return images
