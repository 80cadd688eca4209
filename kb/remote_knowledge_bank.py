"""Remote knowledge banks: settings, the core knowledge bank over REST and the staging writer."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from kb.remote_checks import document_bodies, filter_json, path_segment, query_params, search_body, settings_body
from kb.remote_folders import RemoteManagedFolder
from kb.remote_llm import RemoteLLM
from kb.remote_sync import mirror_directory, mirror_folder_for, run_sync_job, server_folder
from kb_base import errors
from kb_base.filters import Filter
from kb_base.input_checks import check_ids, check_string
from kb_base.search import SearchRequest, SearchResult, image_paths_of
from stores.langchain import KBVectorStore
from writers.formatter import MetadataFormatter
from writers.schema import validate_filter, validate_schema_definition
from writers.sync import SyncOptions, SyncReport

if TYPE_CHECKING:  # the project (kb.remote) hands out these handles
    from kb.remote import RemoteProject


class RemoteSettings:
    def __init__(self, handle: RemoteKnowledgeBankHandle, raw: dict[str, Any]) -> None:
        self._handle, self._raw = handle, raw

    def get_raw(self) -> dict[str, Any]:
        return self._raw

    def get_metadata_schema(self) -> dict[str, str]:
        return dict(self._raw.get("metadata_schema") or {})

    def set_metadata_schema(self, schema: dict[str, str]) -> None:
        self._raw["metadata_schema"] = validate_schema_definition(schema)

    def get_images_folder(self) -> str | None:
        return self._raw.get("images_folder")

    def set_images_folder(self, folder_full_id: str | None) -> None:
        self._raw["images_folder"] = folder_full_id

    def get_store_settings(self) -> dict[str, Any]:
        return dict(self._raw.get("store") or {})

    def set_store_settings(self, store: dict[str, Any]) -> None:
        self._raw["store"] = dict(store)

    def set_search_settings(self, search: dict[str, Any]) -> None:
        self._raw["search"] = dict(search)

    def set_keyword_settings(self, keyword: dict[str, Any]) -> None:
        self._raw["keyword"] = dict(keyword)

    @property
    def embedding_llm_id(self) -> str:
        return str(self._raw["embedding_llm_id"])

    @property
    def vector_store_type(self) -> str:
        return str(self._raw["vector_store_type"])

    def save(self) -> None:
        body = settings_body(self._raw, f"knowledge bank {self._handle.id!r}")
        self._raw = self._handle.project.transport.json("PUT", f"{self._handle.base}/settings", json=body)


class RemoteKnowledgeBankHandle:
    def __init__(self, project: RemoteProject, kb_id: str, name: str) -> None:
        self.project, self.id, self.name = project, kb_id, name
        self.project_key = project.project_key
        self.base = f"{project.base}/knowledge-banks/{path_segment(kb_id, 'knowledge bank id')}"

    def get_settings(self) -> RemoteSettings:
        return RemoteSettings(self, self.project.transport.json("GET", f"{self.base}/settings"))

    def as_core_knowledge_bank(self) -> RemoteCoreKnowledgeBank:
        return RemoteCoreKnowledgeBank(self)

    def delete(self) -> None:
        self.project.transport.request("DELETE", self.base)


@dataclass
class StagedCommit:
    """The remote writer's pending operations, kept in its local staging folder until commit."""

    folder: Path
    clear: bool = False
    deletes: list[str] = field(default_factory=list)
    upserts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self) -> None:
        (self.folder / "commit.json").write_text(json.dumps(
            {"clear": self.clear, "deletes": self.deletes, "upserts": list(self.upserts.values())}))


class RemoteCoreKnowledgeBank:
    def __init__(self, handle: RemoteKnowledgeBankHandle) -> None:
        self.handle, self.id, self.name = handle, handle.id, handle.name
        self.project_key = handle.project_key
        self.transport = handle.project.transport
        self.settings = handle.get_settings().get_raw()

    def refresh(self) -> None:
        """Re-read the settings (another client may have saved new ones: a new metadata schema)."""
        self.settings = self.handle.get_settings().get_raw()

    @property
    def schema(self) -> dict[str, str]:
        return dict(self.settings.get("metadata_schema") or {})

    @property
    def embedding_llm_id(self) -> str:
        return str(self.settings["embedding_llm_id"])

    def langchain_embeddings(self) -> Embeddings:
        return RemoteLLM(self.transport, self.project_key, self.embedding_llm_id).as_langchain_embeddings()

    def check_filter(self, flt: Filter | None) -> Filter | None:
        """A parsed filter checked against the metadata schema (what the LangChain classes call)."""
        return validate_filter(self.schema, flt)

    def search(self, request: SearchRequest | None = None, reader: Any = None, **kwargs: Any) -> list[SearchResult]:
        body = search_body(request or SearchRequest(**kwargs), self.schema)
        if request is None:  # what the caller did not name, the server fills from the knowledge bank's settings
            for key in ("k", "search_type"):
                if key not in kwargs:
                    body.pop(key)
        hits = self.transport.json("POST", f"{self.handle.base}/search", json=body)["results"]
        return [SearchResult(h["id"], h["text"], h["metadata"], h["score"], h["scores"]) for h in hits]

    def similarity_documents(self, vector: Sequence[float], k: int, filter: Mapping[str, Any] | None = None,
                             reader: Any = None) -> list[tuple[Document, float]]:
        """``search(vector=..., search_type="similarity")`` as LangChain documents and scores."""
        results = self.search(SearchRequest(vector=vector, k=k, filter=filter))
        return [(Document(page_content=r.text, metadata=dict(r.metadata), id=r.id), r.score) for r in results]

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        checked = filter_json(filter, self.schema)
        params = {"filter": json.dumps(checked)} if checked else {}
        return int(self.transport.json("GET", f"{self.handle.base}/count", params=params)["count"])

    def index_info(self) -> dict[str, Any]:
        """The vector index's type and its memory and disk use, as the server's process holds it."""
        return dict(self.transport.json("GET", f"{self.handle.base}/index"))

    def get_documents(self, ids: Sequence[str], tx: StagedCommit | None = None) -> list[Document]:
        ids = check_ids(ids)
        found = {d["id"]: d for d in self.transport.json("POST", f"{self.handle.base}/documents/get",
                                                         json={"ids": list(ids)})}
        if tx is not None:
            if tx.clear:
                found = {}
            for doc_id in tx.deletes:
                found.pop(doc_id, None)
            found.update({k: v for k, v in tx.upserts.items() if k in ids})
        return [Document(page_content=found[i]["text"], metadata=found[i]["metadata"], id=i) for i in ids if i in found]

    def write_texts(self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None], ids: Sequence[str],
                    vectors: Sequence[Sequence[float]] | None = None, tx: StagedCommit | None = None) -> None:
        docs = document_bodies(texts, metadatas, ids, vectors, self.schema)
        if tx is not None:
            for doc in docs:
                if doc["id"] in tx.deletes:
                    tx.deletes.remove(doc["id"])
                tx.upserts[doc["id"]] = doc
            tx.save()
            return
        self.transport.json("POST", f"{self.handle.base}/documents", json={"documents": docs})

    def delete_documents(self, ids: Sequence[str], tx: StagedCommit | None = None) -> int:
        ids = check_ids(ids)
        if tx is not None:
            for doc_id in ids:
                tx.upserts.pop(doc_id, None)
                tx.deletes.append(doc_id)
            tx.save()
            return len(ids)
        return int(self.transport.json("POST", f"{self.handle.base}/documents/delete", json={"ids": list(ids)})
                   ["deleted"])

    def ingest_file(self, path: Path, params: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
        """Stream a file to the server's ingestion (``POST .../ingest``) with an upload progress bar; its report."""
        from tqdm import tqdm

        params = query_params(params, "ingestion option")
        with open(path, "rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                              desc=f"upload {path.name}", disable=not progress) as bar:
            def blocks() -> Any:
                while block := handle.read(1 << 20):
                    bar.update(len(block))
                    yield block

            # no timeout: the server answers when the whole file is ingested
            return self.transport.json("POST", f"{self.handle.base}/ingest", content=blocks(), timeout=None,
                                       params=params)

    def commit(self, staged: StagedCommit) -> dict[str, Any]:
        body = {"clear": staged.clear, "deletes": staged.deletes, "upserts": list(staged.upserts.values())}
        return self.transport.json("POST", f"{self.handle.base}/commits", json=body)

    def as_langchain_vectorstore(self, **kwargs: Any) -> VectorStore:
        return self.langchain_vectorstore(None, **kwargs)

    def langchain_vectorstore(self, tx: StagedCommit | None, **kwargs: Any) -> VectorStore:
        if kwargs:
            raise errors.InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        return KBVectorStore(self, tx)  # type: ignore[arg-type]

    def as_langchain_retriever(self, search_type: str = "similarity", search_kwargs: dict[str, Any] | None = None,
                               vectorstore_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        store = self.as_langchain_vectorstore(**(vectorstore_kwargs or {}))
        return store.as_retriever(search_type=search_type, search_kwargs=dict(search_kwargs or {}), **kwargs)

    def get_writer(self, timeout: float = 30.0) -> RemoteWriter:
        """A writer that stages locally and commits in one request; the server takes its writer lock only for
        that request, so ``timeout`` (kept for the embedded signature) has nothing to wait for here."""
        self.refresh()  # the current metadata schema, as the embedded get_writer re-reads it
        return RemoteWriter(self)

    def sync_folder(self, folder: Any, extraction: str = "raw", screenshots: bool = False, progress: bool = False,
                    engine: Any = None, upload_to: str | None = None, **options: Any) -> SyncReport:
        """Make this knowledge bank hold exactly the documents of ``folder``, synced by the server.

        ``folder`` is one of the server's managed folders (a ``RemoteManagedFolder``, or its id or name), or a
        local directory, mirrored first into the managed folder ``upload_to`` (by default ``<knowledge bank
        name> sources``; only changed files travel): see ``kb.remote_sync``. Same options, progress bar, report
        and errors as the embedded ``sync_folder``; ``lock_timeout`` waits for another sync to end."""
        if engine is not None:
            raise errors.InvalidInputError("a remote sync runs on the server, on the engine its administrator "
                                           "configured (KB_RAY_ADDRESS): engine= is for an embedded client")
        settings = SyncOptions.from_mapping({"extraction": extraction, "screenshots": screenshots, **options})
        if upload_to is not None:
            check_string(upload_to, "upload_to")
        if isinstance(folder, RemoteManagedFolder):
            target = folder
        elif isinstance(folder, str | Path) and _is_directory(folder):
            target = mirror_folder_for(self, upload_to)
            mirror_directory(Path(folder).expanduser(), target, progress=progress)
        elif isinstance(folder, str):
            target = server_folder(self, folder)
        else:
            raise errors.InvalidInputError(f"sync_folder takes a managed folder of the server or a local directory, "
                                           f"got {type(folder).__name__}")
        return run_sync_job(self, target, settings, progress=progress)

    def images_folder(self) -> RemoteManagedFolder:
        ref = self.handle.get_settings().get_images_folder()
        if not ref:
            raise errors.NotFoundError(
                f"knowledge bank {self.id} has no images folder; set one with settings.set_images_folder")
        project_key, _, folder_id = ref.rpartition(".")
        return self.handle.project.sibling(project_key or self.project_key).get_managed_folder(folder_id)

    def ensure_images_folder(self) -> RemoteManagedFolder:
        """The images folder, created (``<kb name> pages``) and saved in the settings if missing."""
        settings = self.handle.get_settings()
        if settings.get_images_folder():
            return self.images_folder()
        project = self.handle.project
        try:
            folder = project.create_managed_folder(f"{self.name} pages")
        except errors.AlreadyExistsError:
            folder = project.create_managed_folder(f"{self.name} pages {self.id}")
        settings.set_images_folder(folder.full_id)
        settings.save()
        self.refresh()
        return folder

    def get_images(self, item: Document | SearchResult | Mapping[str, Any]) -> list[bytes]:
        metadata = item.metadata if isinstance(item, Document | SearchResult) else item
        paths = image_paths_of(metadata)
        if not paths:
            return []
        folder = self.images_folder()
        ref = folder.full_id
        out = []
        for path in paths:
            try:
                out.append(folder.read(path))
            except errors.NotFoundError as exc:
                raise errors.ImageNotFoundError(f"image {path!r} is not in images folder {ref}") from exc
        return out


def _is_directory(path: str | Path) -> bool:
    try:
        return Path(path).expanduser().is_dir()
    except (ValueError, OSError):  # a NUL in the string, a name too long: no directory of this machine
        return False


class RemoteWriter:
    """Stages writes in ``folder_path``; a clean exit sends them as one atomic commit, an exception sends nothing.

    Inside the block, the writer's vector store reads the server's committed state plus its own
    staged documents for ``get_by_ids``; searches see the committed state only.
    """

    def __init__(self, core: RemoteCoreKnowledgeBank) -> None:
        self.core = core
        self._staged: StagedCommit | None = None

    @property
    def folder_path(self) -> str:
        if self._staged is None:
            raise errors.WriterClosedError("the writer is not open: use it inside `with core.get_writer() as w:`")
        return str(self._staged.folder)

    def __enter__(self) -> RemoteWriter:
        self._staged = StagedCommit(Path(tempfile.mkdtemp(prefix=f"kb-writer-{uuid.uuid4().hex[:8]}-")))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        staged, self._staged = self._staged, None
        if staged is None:
            return
        try:
            if exc_type is None:
                self.core.commit(staged)
        finally:
            shutil.rmtree(staged.folder, ignore_errors=True)

    @property
    def transaction(self) -> StagedCommit:
        if self._staged is None:
            raise errors.WriterClosedError("the writer is not open: use it inside `with core.get_writer() as w:`")
        return self._staged

    def clear(self) -> None:
        staged = self.transaction
        staged.clear, staged.deletes, staged.upserts = True, [], {}
        staged.save()

    def get_metadata_formatter(self) -> MetadataFormatter:
        return MetadataFormatter()

    def as_langchain_vectorstore(self) -> VectorStore:
        return self.core.langchain_vectorstore(self.transaction)

    def add_documents(self, documents: list[Document], ids: list[str] | None = None) -> list[str]:
        """Stage documents (checked now, sent at commit), as the embedded writer's ``add_documents``."""
        return self.as_langchain_vectorstore().add_documents(documents, ids=ids) if ids else \
            self.as_langchain_vectorstore().add_documents(documents)

    def delete(self, ids: list[str]) -> int:
        return self.core.delete_documents(ids, tx=self.transaction)

    def staging_path(self, name: str) -> Path:
        """A path in the writer's private staging folder, removed when the block ends."""
        return self.transaction.folder / name
