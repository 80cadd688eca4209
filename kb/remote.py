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

from dataclasses import dataclass
from typing import Any

from kb.catalog import PROJECT_KEY_RE, check_name
from kb.llm import LLMListItem
from kb.remote_checks import path_segment, query_params, settings_body
from kb.remote_folders import RemoteManagedFolder
from kb.remote_knowledge_bank import RemoteKnowledgeBankHandle
from kb.remote_llm import RemoteLLM
from kb.remote_transport import RemoteAuthError, RemoteForbiddenError, Transport
from kb_base import errors
from kb_base.input_checks import check_string

__all__ = ["RemoteAuthError", "RemoteClient", "RemoteForbiddenError", "RemoteManagedFolder", "RemoteProject",
           "Transport"]


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

    # --- connections (global admin; secrets are sent, never returned) -------------------------

    def create_connection(self, name: str, type: str, params: dict[str, Any], replace: bool = False) -> None:
        """``type`` is ``openai-compatible`` (embeddings), ``chroma``, ``elasticsearch`` or ``azure-ai-search``
        (stores), or ``rerank``; ``replace=True`` overwrites a connection of that name."""
        if not isinstance(params, dict):
            raise errors.InvalidInputError("connection params must be a mapping")
        check_string(name, "connection name")
        check_string(type, "connection type")
        params = settings_body(params, f"connection {name!r}")
        if replace:
            self.transport.json("PUT", f"/v1/connections/{path_segment(name, 'connection name')}",
                                json={"type": type, "params": params})
        else:
            self.transport.json("POST", "/v1/connections", json={"name": name, "type": type, "params": params})

    def list_connections(self) -> list[dict[str, Any]]:
        """Connections with their secrets masked (``***``): the server never sends them back."""
        return self.transport.json("GET", "/v1/connections")

    def delete_connection(self, name: str) -> None:
        self.transport.request("DELETE", f"/v1/connections/{path_segment(name, 'connection name')}")

    # --- knowledge banks by project key (what the project's methods do) -----------------------

    def create_knowledge_bank(self, project_key: str, name: str, embedding_llm_id: str | None = None,
                              vector_store_type: str = "FAISS", settings: dict[str, Any] | None = None) -> str:
        """The new knowledge bank's id (``project.create_knowledge_bank`` returns its handle)."""
        return RemoteProject(self.transport, project_key).create_knowledge_bank(
            name, embedding_llm_id, vector_store_type, settings).id

    def delete_knowledge_bank(self, project_key: str, kb_id: str) -> None:
        RemoteProject(self.transport, project_key).get_knowledge_bank(kb_id).delete()

    def resolve_folder(self, ref: str, default_project: str) -> RemoteManagedFolder:
        """A managed folder by ``'<PROJECT>.<folder id>'`` (or an id or name in ``default_project``)."""
        if not isinstance(ref, str) or not ref:
            raise errors.InvalidInputError(f"folder reference must be '<PROJECT>.<folder id>', got {ref!r}")
        project_key, _, folder_ref = ref.rpartition(".")
        return RemoteProject(self.transport, project_key or default_project).get_managed_folder(folder_ref)

    def close(self) -> None:
        self.transport.close()

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
        folders = self.list_managed_folders()
        # an id first, as the embedded catalog looks it up: a folder's name may equal another folder's id
        for info in sorted(folders, key=lambda info: info["id"] != folder_ref):
            if folder_ref in (info["id"], info["name"]):
                return RemoteManagedFolder(self, info["id"], info["name"])
        raise errors.NotFoundError(f"managed folder {folder_ref!r} does not exist in project {self.project_key!r}")

    def list_managed_folders(self) -> list[dict[str, Any]]:
        return self.transport.json("GET", f"{self.base}/folders")

    def delete_managed_folder(self, folder_ref: str) -> None:
        """Delete a managed folder (by id or name) and its files (the project's admin role)."""
        folder = self.get_managed_folder(folder_ref)
        self.transport.request("DELETE", f"{self.base}/folders/{path_segment(folder.id, 'managed folder id')}")

    def delete(self) -> None:
        """Delete this project (a global admin key): refused for DEFAULT and while it holds knowledge banks or
        managed folders, as the embedded ``project.delete()``."""
        self.transport.request("DELETE", self.base)


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
