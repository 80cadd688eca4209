"""A kb server's embedding models over REST: ``project.get_llm(id)`` on the remote client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.embeddings import Embeddings

from kb.llm import EmbeddingResponse
from kb.remote_checks import path_segment, texts_to_embed
from kb.remote_transport import Transport
from kb_base import errors


class RemoteEmbeddings(Embeddings):
    def __init__(self, llm: RemoteLLM) -> None:
        self.llm = llm

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.llm.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.llm.embed([text])[0]


class RemoteEmbeddingQuery:
    def __init__(self, llm: RemoteLLM) -> None:
        self.llm, self._texts = llm, []  # type: ignore[var-annotated]

    def add_text(self, text: str) -> RemoteEmbeddingQuery:
        if not isinstance(text, str):
            raise errors.InvalidInputError(f"add_text expects a string, got {type(text).__name__}")
        self._texts.append(text)
        return self

    def execute(self) -> Any:
        return EmbeddingResponse(self.llm.embed(self._texts) if self._texts else [])


@dataclass
class RemoteLLM:
    transport: Transport
    project_key: str
    id: str

    @property
    def llm_id(self) -> str:
        return self.id

    @property
    def description(self) -> str:
        for item in self.transport.json("GET", f"/v1/projects/{path_segment(self.project_key, 'project key')}/llms"):
            if item["id"] == self.id:
                return str(item["description"])
        raise errors.UnknownModelError(f"unknown embedding model {self.id!r}")

    def embed(self, texts: list[str]) -> list[list[float]]:
        path = (f"/v1/projects/{path_segment(self.project_key, 'project key')}/llms/"
                f"{path_segment(self.id, 'embedding model id')}/embeddings")
        return self.transport.json("POST", path, json={"texts": texts_to_embed(texts)})["embeddings"]

    def new_embeddings(self) -> RemoteEmbeddingQuery:
        return RemoteEmbeddingQuery(self)

    def as_langchain_embeddings(self) -> RemoteEmbeddings:
        return RemoteEmbeddings(self)
