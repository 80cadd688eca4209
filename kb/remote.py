"""The REST client: ``kb.api_client(url=..., api_key=...)`` with the same objects as the embedded client.

Projects, embedding models, managed folders, knowledge banks and their
settings map onto the service's resources (the knowledge-bank classes are in
``kb.remote_knowledge_bank``, the embedding models in ``kb.remote_llm``, the HTTP layer in ``kb.remote_transport``).
``as_core_knowledge_bank()`` returns a ``RemoteCoreKnowledgeBank`` whose LangChain vector store and
retriever are kb's own (``stores.langchain``) over HTTP, and whose
writer stages operations locally and sends them as one atomic commit when
the ``with`` block ends cleanly (nothing at all after an exception).
Server errors come back as the same ``kb.errors`` classes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from kb.catalog import PROJECT_KEY_RE, check_name
from kb.llm import LLMListItem
from kb.remote_checks import path_segment, query_params, settings_body
from kb.remote_knowledge_bank import RemoteKnowledgeBankHandle
from kb.remote_llm import RemoteLLM
from kb.remote_transport import RemoteAuthError, RemoteForbiddenError, Transport
from kb_base import errors
from kb_base.folders import normalise_path
from kb_base.input_checks import check_string

__all__ = ["RemoteAuthError", "RemoteClient", "RemoteForbiddenError", "RemoteProject", "Transport"]


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
        project = RemoteProject(self.transport, project_key)
        self.transport.json("GET", project.base)
        return project

    def create_project(self, project_key: str, name: str | None = None) -> RemoteProject:
        if not isinstance(project_key, str) or not PROJECT_KEY_RE.match(project_key):
            raise errors.InvalidInputError(f"invalid project key {project_key!r}: use 1-64 letters, digits or "
                                           "underscores")
        if name is not None:
            check_string(name, "project name")
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


class RemoteProject:
    def __init__(self, transport: Transport, project_key: str) -> None:
        self.transport, self.project_key = transport, project_key
        self.base = f"/v1/projects/{path_segment(project_key, 'project key')}"

    def list_llms(self, purpose: str | None = None) -> list[LLMListItem]:
        params = query_params({"purpose": purpose or None}, "model listing option")
        return [LLMListItem(**item) for item in self.transport.json("GET", f"{self.base}/llms", params=params)]

    def sibling(self, project_key: str) -> RemoteProject:
        """Another project on the same server (an images folder may live in another project: ``KEY.id``)."""
        return RemoteProject(self.transport, project_key)

    def get_llm(self, llm_id: str) -> RemoteLLM:
        if llm_id not in {i.id for i in self.list_llms()}:
            raise errors.UnknownModelError(f"unknown embedding model {llm_id!r}")
        return RemoteLLM(self.transport, self.project_key, llm_id)

    def list_knowledge_banks(self, as_type: str = "listitems") -> list[Any]:
        items = [RemoteKnowledgeBankListItem(self, **i) for i in
                 self.transport.json("GET", f"{self.base}/knowledge-banks")]
        return [i.to_knowledge_bank() for i in items] if as_type == "objects" else items

    def get_knowledge_bank(self, kb_id: str) -> RemoteKnowledgeBankHandle:
        info = self.transport.json("GET", f"{self.base}/knowledge-banks/{path_segment(kb_id, 'knowledge bank id')}")
        return RemoteKnowledgeBankHandle(self, info["id"], info["name"])

    def create_knowledge_bank(self, name: str, embedding_llm_id: str | None = None, vector_store_type: str = "FAISS",
                              settings: dict[str, Any] | None = None) -> RemoteKnowledgeBankHandle:
        check_name("knowledge bank", name)
        body = {"name": name, "vector_store_type": vector_store_type,
                "settings": settings_body(settings or {}, f"knowledge bank {name!r}")}
        if embedding_llm_id:
            body["embedding_llm_id"] = embedding_llm_id
        info = self.transport.json("POST", f"{self.base}/knowledge-banks", json=body)
        return RemoteKnowledgeBankHandle(self, info["id"], info["name"])

    def create_managed_folder(self, name: str) -> RemoteManagedFolder:
        check_name("managed folder", name)
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
        self.base = f"{project.base}/folders/{path_segment(folder_id, 'managed folder id')}/files"

    def get_id(self) -> str:
        return self.id

    def _path(self, path: str) -> str:
        return self.base + quote(normalise_path(path))

    def upload_data(self, path: str, data: bytes) -> None:
        target = self._path(path)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise errors.InvalidInputError(f"upload_data({path!r}): the data must be bytes, got {type(data).__name__}")
        self.project.transport.request("PUT", target, content=bytes(data))

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
