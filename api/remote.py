"""The REST client: ``kb.api_client(url=..., api_key=...)`` with the same objects as the embedded client.

Projects, embedding models, managed folders, knowledge banks and their
settings map onto the service's resources. ``as_core_knowledge_bank()``
returns a ``RemoteCoreKnowledgeBank`` whose LangChain vector store and
retriever are kb's own (``kb.langchain_vectorstore``) over HTTP, and whose
writer stages operations locally and sends them as one atomic commit when
the ``with`` block ends cleanly (nothing at all after an exception).
Server errors come back as the same ``kb.errors`` classes.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from kb import errors
from kb.folders import normalise_path
from kb.llm import LLMListItem
from kb.search import SearchRequest, SearchResult, image_paths_of
from writers.formatter import MetadataFormatter

_IDEMPOTENT = ("GET", "PUT", "DELETE")


def _error_classes() -> dict[str, type[errors.KBError]]:
    found: dict[str, type[errors.KBError]] = {}
    pending: list[type[errors.KBError]] = [errors.KBError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


class RemoteAuthError(errors.KBError):
    http_status = 401
    code = "unauthenticated"


class RemoteForbiddenError(errors.KBError):
    http_status = 403
    code = "forbidden"


class Transport:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0, retries: int = 3) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base = url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)
        self.retries = retries
        self.classes = _error_classes()
        self.classes.update({"unauthenticated": RemoteAuthError, "forbidden": RemoteForbiddenError})

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self.retries + 1 if method in _IDEMPOTENT else 1
        for attempt in range(attempts):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise errors.StoreUnavailableError(f"kb service at {self.base} unreachable: {exc}") from exc
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code == 503 and attempt + 1 < attempts:
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 400:
                self._raise(response)
            return response
        raise AssertionError("unreachable")

    def _raise(self, response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "internal_error", f"HTTP {response.status_code}: {response.text[:300]}"
        cls = self.classes.get(code, errors.KBError)
        raise cls(message)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()


class RemoteClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.transport = Transport(url, api_key, timeout)
        self.url = url

    def __repr__(self) -> str:
        return f"RemoteClient({self.url!r})"

    def list_projects(self) -> list[dict[str, Any]]:
        return self.transport.json("GET", "/v1/projects")

    def list_project_keys(self) -> list[str]:
        return [p["key"] for p in self.list_projects()]

    def get_project(self, project_key: str) -> RemoteProject:
        self.transport.json("GET", f"/v1/projects/{quote(project_key)}")
        return RemoteProject(self.transport, project_key)

    def create_project(self, project_key: str, name: str | None = None) -> RemoteProject:
        self.transport.json("POST", "/v1/projects", json={"key": project_key, "name": name})
        return RemoteProject(self.transport, project_key)

    def get_default_project(self) -> RemoteProject:
        return RemoteProject(self.transport, "DEFAULT")

    def close(self) -> None:
        self.transport.http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteEmbeddings(Embeddings):
    def __init__(self, llm: RemoteLLM) -> None:
        self.llm = llm

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.llm.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.llm.embed([text])[0]


class RemoteEmbeddingQuery:
    def __init__(self, llm: RemoteLLM) -> None:
        self.llm, self.texts = llm, []  # type: ignore[var-annotated]

    def add_text(self, text: str) -> RemoteEmbeddingQuery:
        if not isinstance(text, str):
            raise errors.InvalidInputError(f"add_text expects a string, got {type(text).__name__}")
        self.texts.append(text)
        return self

    def execute(self) -> Any:
        from kb.llm import EmbeddingResponse

        return EmbeddingResponse(self.llm.embed(self.texts) if self.texts else [])


@dataclass
class RemoteLLM:
    transport: Transport
    project_key: str
    id: str

    def embed(self, texts: list[str]) -> list[list[float]]:
        path = f"/v1/projects/{quote(self.project_key)}/llms/{quote(self.id, safe='')}/embeddings"
        return self.transport.json("POST", path, json={"texts": texts})["embeddings"]

    def new_embeddings(self) -> RemoteEmbeddingQuery:
        return RemoteEmbeddingQuery(self)

    def as_langchain_embeddings(self) -> RemoteEmbeddings:
        return RemoteEmbeddings(self)


class RemoteProject:
    def __init__(self, transport: Transport, project_key: str) -> None:
        self.transport, self.project_key = transport, project_key
        self.base = f"/v1/projects/{quote(project_key)}"

    def list_llms(self, purpose: str | None = None) -> list[LLMListItem]:
        params = {"purpose": purpose} if purpose else {}
        return [LLMListItem(**item) for item in self.transport.json("GET", f"{self.base}/llms", params=params)]

    def get_llm(self, llm_id: str) -> RemoteLLM:
        if llm_id not in {i.id for i in self.list_llms()}:
            raise errors.UnknownModelError(f"unknown embedding model {llm_id!r}")
        return RemoteLLM(self.transport, self.project_key, llm_id)

    def list_knowledge_banks(self, as_type: str = "listitems") -> list[Any]:
        items = [RemoteKnowledgeBankListItem(self, **i) for i in
                 self.transport.json("GET", f"{self.base}/knowledge-banks")]
        return [i.to_knowledge_bank() for i in items] if as_type == "objects" else items

    def get_knowledge_bank(self, kb_id: str) -> RemoteKnowledgeBankHandle:
        info = self.transport.json("GET", f"{self.base}/knowledge-banks/{quote(kb_id)}")
        return RemoteKnowledgeBankHandle(self, info["id"], info["name"])

    def create_knowledge_bank(self, name: str, embedding_llm_id: str | None = None, vector_store_type: str = "FAISS",
                              settings: dict[str, Any] | None = None) -> RemoteKnowledgeBankHandle:
        body = {"name": name, "vector_store_type": vector_store_type, "settings": settings or {}}
        if embedding_llm_id:
            body["embedding_llm_id"] = embedding_llm_id
        info = self.transport.json("POST", f"{self.base}/knowledge-banks", json=body)
        return RemoteKnowledgeBankHandle(self, info["id"], info["name"])

    def create_managed_folder(self, name: str) -> RemoteManagedFolder:
        info = self.transport.json("POST", f"{self.base}/folders", json={"name": name})
        return RemoteManagedFolder(self, info["id"], info["name"])

    def get_managed_folder(self, folder_ref: str) -> RemoteManagedFolder:
        for info in self.list_managed_folders():
            if folder_ref in (info["id"], info["name"]):
                return RemoteManagedFolder(self, info["id"], info["name"])
        raise errors.NotFoundError(f"managed folder {folder_ref!r} does not exist in project {self.project_key!r}")

    def list_managed_folders(self) -> list[dict[str, Any]]:
        return self.transport.json("GET", f"{self.base}/folders")


@dataclass
class RemoteKnowledgeBankListItem:
    project: RemoteProject
    id: str
    name: str
    project_key: str
    vector_store_type: str
    embedding_llm_id: str

    def to_knowledge_bank(self) -> RemoteKnowledgeBankHandle:
        return RemoteKnowledgeBankHandle(self.project, self.id, self.name)


class RemoteManagedFolder:
    def __init__(self, project: RemoteProject, folder_id: str, name: str) -> None:
        self.project, self.id, self.name = project, folder_id, name
        self.project_key = project.project_key
        self.base = f"{project.base}/folders/{quote(folder_id)}/files"

    def get_id(self) -> str:
        return self.id

    def _path(self, path: str) -> str:
        return self.base + quote(normalise_path(path))

    def upload_data(self, path: str, data: bytes) -> None:
        self.project.transport.request("PUT", self._path(path), content=data)

    def upload_stream(self, path: str, stream: BinaryIO) -> None:
        self.upload_data(path, stream.read())

    def upload_file(self, path: str, local_file: str | Path) -> None:
        self.upload_data(path, Path(local_file).read_bytes())

    def read(self, path: str) -> bytes:
        return self.project.transport.request("GET", self._path(path)).content

    def get_download_stream(self, path: str) -> BinaryIO:
        return io.BytesIO(self.read(path))

    def list_paths(self) -> list[str]:
        return self.project.transport.json("GET", self.base)

    def delete_path(self, path: str) -> None:
        self.project.transport.request("DELETE", self._path(path))


class RemoteSettings:
    def __init__(self, handle: RemoteKnowledgeBankHandle, raw: dict[str, Any]) -> None:
        self._handle, self._raw = handle, raw

    def get_raw(self) -> dict[str, Any]:
        return self._raw

    def get_metadata_schema(self) -> dict[str, str]:
        return dict(self._raw.get("metadata_schema") or {})

    def set_metadata_schema(self, schema: dict[str, str]) -> None:
        from writers.schema import validate_schema_definition

        self._raw["metadata_schema"] = validate_schema_definition(schema)

    def get_images_folder(self) -> str | None:
        return self._raw.get("images_folder")

    def set_images_folder(self, folder_full_id: str | None) -> None:
        self._raw["images_folder"] = folder_full_id

    def set_store_settings(self, store: dict[str, Any]) -> None:
        self._raw["store"] = dict(store)

    def set_search_settings(self, search: dict[str, Any]) -> None:
        self._raw["search"] = dict(search)

    def save(self) -> None:
        self._raw = self._handle.project.transport.json("PUT", f"{self._handle.base}/settings", json=self._raw)


class RemoteKnowledgeBankHandle:
    def __init__(self, project: RemoteProject, kb_id: str, name: str) -> None:
        self.project, self.id, self.name = project, kb_id, name
        self.project_key = project.project_key
        self.base = f"{project.base}/knowledge-banks/{quote(kb_id)}"

    def get_settings(self) -> RemoteSettings:
        return RemoteSettings(self, self.project.transport.json("GET", f"{self.base}/settings"))

    def as_core_knowledge_bank(self) -> RemoteCoreKnowledgeBank:
        return RemoteCoreKnowledgeBank(self)

    def delete(self) -> None:
        self.project.transport.request("DELETE", self.base)


def _doc_body(doc_id: str, text: str, metadata: Mapping[str, Any] | None, vector: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": doc_id, "text": text, "metadata": dict(metadata or {})}
    if vector is not None:
        body["vector"] = [float(x) for x in np.asarray(vector, dtype=np.float32)]
    return body


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

    @property
    def embedding_llm_id(self) -> str:
        return str(self.settings["embedding_llm_id"])

    def langchain_embeddings(self) -> Embeddings:
        return RemoteLLM(self.transport, self.project_key, self.embedding_llm_id).as_langchain_embeddings()

    def search(self, request: SearchRequest | None = None, reader: Any = None, **kwargs: Any) -> list[SearchResult]:
        request = request or SearchRequest(**kwargs)
        body = {k: v for k, v in vars(request).items() if v is not None and k != "candidates"}
        if body.get("vector") is not None:
            body["vector"] = [float(x) for x in body["vector"]]
        hits = self.transport.json("POST", f"{self.handle.base}/search", json=body)["results"]
        return [SearchResult(h["id"], h["text"], h["metadata"], h["score"], h["scores"]) for h in hits]

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        params = {"filter": json.dumps(filter)} if filter else {}
        return int(self.transport.json("GET", f"{self.handle.base}/count", params=params)["count"])

    def get_documents(self, ids: Sequence[str], tx: StagedCommit | None = None) -> list[Document]:
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
        docs = [_doc_body(i, t, m, vectors[n] if vectors is not None else None)
                for n, (i, t, m) in enumerate(zip(ids, texts, metadatas, strict=True))]
        if tx is not None:
            for doc in docs:
                if doc["id"] in tx.deletes:
                    tx.deletes.remove(doc["id"])
                tx.upserts[doc["id"]] = doc
            tx.save()
            return
        self.transport.json("POST", f"{self.handle.base}/documents", json={"documents": docs})

    def delete_documents(self, ids: Sequence[str], tx: StagedCommit | None = None) -> int:
        if tx is not None:
            for doc_id in ids:
                tx.upserts.pop(doc_id, None)
                tx.deletes.append(doc_id)
            tx.save()
            return len(ids)
        return int(self.transport.json("POST", f"{self.handle.base}/documents/delete", json={"ids": list(ids)})
                   ["deleted"])

    def commit(self, staged: StagedCommit) -> dict[str, Any]:
        body = {"clear": staged.clear, "deletes": staged.deletes, "upserts": list(staged.upserts.values())}
        return self.transport.json("POST", f"{self.handle.base}/commits", json=body)

    def as_langchain_vectorstore(self, **kwargs: Any) -> VectorStore:
        return self.langchain_vectorstore(None, **kwargs)

    def langchain_vectorstore(self, tx: StagedCommit | None, **kwargs: Any) -> VectorStore:
        from kb.langchain_vectorstore import KBVectorStore

        if kwargs:
            raise errors.InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        return KBVectorStore(self, tx)  # type: ignore[arg-type]

    def as_langchain_retriever(self, search_type: str = "similarity", search_kwargs: dict[str, Any] | None = None,
                               vectorstore_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        store = self.as_langchain_vectorstore(**(vectorstore_kwargs or {}))
        return store.as_retriever(search_type=search_type, search_kwargs=dict(search_kwargs or {}), **kwargs)

    def get_writer(self, timeout: float = 30.0) -> RemoteWriter:
        return RemoteWriter(self)

    def get_images(self, item: Document | SearchResult | Mapping[str, Any]) -> list[bytes]:
        metadata = item.metadata if isinstance(item, Document | SearchResult) else item
        paths = image_paths_of(metadata)
        if not paths:
            return []
        ref = self.handle.get_settings().get_images_folder()
        if not ref:
            raise errors.NotFoundError(f"knowledge bank {self.id} has no images folder")
        project_key, _, folder_id = ref.rpartition(".")
        folder = RemoteProject(self.transport, project_key or self.project_key).get_managed_folder(folder_id)
        out = []
        for path in paths:
            try:
                out.append(folder.read(path))
            except errors.NotFoundError as exc:
                raise errors.ImageNotFoundError(f"image {path!r} is not in images folder {ref}") from exc
        return out


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
