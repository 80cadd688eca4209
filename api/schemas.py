"""Pydantic models at the edge of the REST API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kb.embeddings import DEFAULT_EMBEDDING_LLM_ID

SearchType = Literal["similarity", "similarity_score_threshold", "mmr", "keyword", "hybrid", "semantic_hybrid"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ProjectIn(Strict):
    key: str = Field(examples=["RESEARCH"], description="1-64 letters, digits or underscores")
    name: str | None = None


class ProjectOut(BaseModel):
    key: str
    name: str


class LLMOut(BaseModel):
    id: str = Field(examples=["local:all-MiniLM-L6-v2"])
    description: str
    type: str
    purpose: str


class EmbedIn(Strict):
    texts: list[str] = Field(examples=[["The quick brown fox"]])


class EmbedOut(BaseModel):
    embeddings: list[list[float]]


class FolderIn(Strict):
    name: str = Field(examples=["images"])


class FolderOut(BaseModel):
    id: str
    name: str
    project_key: str


class KnowledgeBankIn(Strict):
    name: str = Field(examples=["papers"])
    embedding_llm_id: str = Field(default=DEFAULT_EMBEDDING_LLM_ID)
    vector_store_type: str = Field(default="FAISS", examples=["FAISS"])
    settings: dict[str, Any] = Field(default_factory=dict,
                                     examples=[{"metadata_schema": {"source": "string", "start_index": "int"}}])


class KnowledgeBankOut(BaseModel):
    id: str
    name: str
    project_key: str
    vector_store_type: str
    embedding_llm_id: str


class SettingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    embedding_llm_id: str
    vector_store_type: str
    metadata_schema: dict[str, str] = Field(default_factory=dict)
    images_folder: str | None = None


class SettingsPatch(Strict):
    """A change of some settings: each top-level key given replaces the stored one, the others are kept."""

    embedding_llm_id: str | None = None
    vector_store_type: str | None = None
    metadata_schema: dict[str, str] | None = Field(default=None, examples=[{"source": "string", "year": "int"}])
    images_folder: str | None = Field(default=None, description="'<PROJECT>.<folder id>'; null unsets it")
    store: dict[str, Any] | None = None
    connection: str | None = None
    keyword: dict[str, Any] | None = None
    search: dict[str, Any] | None = Field(default=None, examples=[{
        "default_search_type": "hybrid", "default_k": 8, "fusion": {"method": "rrf"}}], description=(
        "default_search_type and default_k (what a REST search that leaves search_type or k out gets), "
        "fusion (hybrid fusion settings), reranker (for semantic_hybrid)"))


class DocumentIn(Strict):
    id: str | None = Field(default=None, examples=["doc-1"])
    text: str = Field(examples=["Solar panels convert sunlight into electricity."])
    metadata: dict[str, Any] = Field(default_factory=dict, examples=[{"source": "guide", "start_index": 0}])
    vector: list[float] | None = Field(default=None,
                                       description="precomputed embedding; the server embeds the text when absent")


class DocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]


class UpsertIn(Strict):
    documents: list[DocumentIn]


class IdsIn(Strict):
    ids: list[str]


class DeleteIn(Strict):
    ids: list[str] | None = None
    filter: dict[str, Any] | None = Field(default=None, examples=[{"source": "guide"}])


class CommitIn(Strict):
    """One atomic commit: clear (optional), then deletes, then upserts, all or nothing."""

    clear: bool = False
    deletes: list[str] = Field(default_factory=list)
    upserts: list[DocumentIn] = Field(default_factory=list)


class CountOut(BaseModel):
    count: int


class IndexInfoOut(BaseModel):
    """The vector index of a knowledge bank (FAISS gives every field; server stores give what they can)."""

    model_config = ConfigDict(extra="allow")
    index_type: str | None
    memory_bytes: int | None = Field(description="bytes of the index held in the serving process's memory")
    disk_bytes: int | None = Field(description="bytes on disk: index, vector files and database")


class SearchIn(Strict):
    query: str | None = Field(default=None, examples=["How do solar panels work?"])
    vector: list[float] | None = None
    k: int | None = Field(default=None, ge=1, description="default: the knowledge bank's search.default_k, else 4")
    search_type: SearchType | None = Field(
        default=None, description="default: the knowledge bank's search.default_search_type, else similarity")
    filter: dict[str, Any] | None = None
    fetch_k: int = Field(default=20, ge=1)
    lambda_mult: float = Field(default=0.5, ge=0.0, le=1.0)
    score_threshold: float | None = None
    fusion: Literal["rrf", "linear"] | None = None
    fusion_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    normalisation: Literal["bounded", "minmax", "zscore", "dbsf"] | None = None
    diversity: bool = False


class ImageRef(BaseModel):
    path: str
    folder: str | None
    url: str | None


class SearchHit(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    scores: dict[str, float]
    images: list[ImageRef]


class SearchOut(BaseModel):
    results: list[SearchHit]


class OpenAIEmbeddingsIn(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = "float"
    user: str | None = None
    dimensions: int | None = None


class ConnectionIn(Strict):
    name: str = Field(examples=["myopenai"], description="1-64 letters, digits, '.', '_' or '-'")
    type: str = Field(examples=["openai-compatible"],
                      description="openai-compatible (embeddings), chroma, elasticsearch, azure-ai-search (stores), "
                                  "rerank")
    params: dict[str, Any] = Field(examples=[{"base_url": "https://api.openai.com/v1", "api_key": "sk-...",
                                              "models": ["text-embedding-3-small"]}],
                                   description="the connection's fields; secrets (api_key, password, token, ...) "
                                               "are stored and never returned")


class ConnectionBody(Strict):
    """``PUT /connections/{name}``: create or replace."""

    type: str = Field(examples=["elasticsearch"])
    params: dict[str, Any] = Field(examples=[{"url": "https://es.example:9200", "username": "kb",
                                              "password": "..."}])


class ConnectionOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # the non-secret fields, secrets masked as "***"
    name: str
    type: str


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str
