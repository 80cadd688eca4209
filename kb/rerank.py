"""Rerankers for ``semantic_hybrid`` search: hybrid candidates re-scored by a stronger model.

Configured in a knowledge bank's settings, ``search.reranker``::

    {"type": "cross-encoder", "path": "/models/my-cross-encoder", "candidates": 50}
    {"type": "http", "url": "https://rerank.example/v1/rerank", "model": "rerank-v3",
     "connection": "myreranker", "candidates": 50}

The HTTP reranker speaks the common ``/rerank`` shape (Cohere, Jina, TEI,
vLLM): ``{"model", "query", "documents": [...], "top_n"}`` answered by
``{"results": [{"index", "relevance_score"}]}``. An API key comes from a
named connection (``{"type": "rerank", "api_key": ...}``) so it never sits
in the knowledge bank's settings.
"""

from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from kb_base.errors import EmbeddingError, InvalidInputError, MissingExtraError
from kb_base.search import SearchResult

DEFAULT_CANDIDATES = 50


class Reranker(ABC):
    candidates: int = DEFAULT_CANDIDATES

    @abstractmethod
    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text, higher is better."""

    def rerank(self, query: str, results: Sequence[SearchResult], k: int) -> list[SearchResult]:
        pool = list(results[: max(self.candidates, k)])
        if not pool:
            return []
        scores = self.scores(query, [r.text for r in pool])
        for result, score in zip(pool, scores, strict=True):
            result.scores["rerank"] = float(score)
            result.score = float(score)
        return sorted(pool, key=lambda r: -r.score)[:k]


class CrossEncoderReranker(Reranker):
    """A sentence-transformers CrossEncoder loaded from a local path (never downloaded)."""

    def __init__(self, path: str | Path, candidates: int = DEFAULT_CANDIDATES, batch_size: int = 32) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise InvalidInputError(f"cross-encoder path {str(self.path)!r} is not a local model folder "
                                    "(no config.json); rerankers are never downloaded")
        if not _installed("sentence_transformers"):  # refuse the setting now, not at the first search
            _cross_encoder_class()
        self.candidates = candidates
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                CrossEncoder = _cross_encoder_class()
                self._model = CrossEncoder(str(self.path), device="cpu", local_files_only=True)
            return self._model

    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        model = self._load()
        raw = model.predict([(query, t) for t in texts], batch_size=self.batch_size, show_progress_bar=False)
        return [float(s) for s in raw]


class HttpReranker(Reranker):
    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 30.0,
                 candidates: int = DEFAULT_CANDIDATES) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInputError(f"rerank url must be an http(s) URL, got {url!r}")
        self.url, self.model, self.candidates = url, model, candidates
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        body: dict[str, Any] = {"query": query, "documents": list(texts), "top_n": len(texts)}
        if self.model:
            body["model"] = self.model
        try:
            response = self._http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"rerank endpoint {self.url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise EmbeddingError(f"rerank endpoint {self.url} answered HTTP {response.status_code}: "
                                 f"{response.text[:300]}")
        try:
            scores = [float("-inf")] * len(texts)
            for item in response.json()["results"]:
                scores[int(item["index"])] = float(item["relevance_score"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise EmbeddingError(f"rerank endpoint {self.url} answered with a malformed body: {exc}") from exc
        return scores


def build_reranker(settings: Mapping[str, Any], connections: Mapping[str, Mapping[str, Any]]) -> Reranker:
    if not isinstance(settings, Mapping):
        raise InvalidInputError("search.reranker must be an object")
    kind = settings.get("type")
    candidates = settings.get("candidates", DEFAULT_CANDIDATES)
    if not isinstance(candidates, int) or isinstance(candidates, bool) or not 1 <= candidates <= 1000:
        raise InvalidInputError("reranker candidates must be an integer between 1 and 1000")
    if kind == "cross-encoder":
        return CrossEncoderReranker(settings.get("path", ""), candidates=candidates)
    if kind == "http":
        api_key = None
        if settings.get("connection"):
            connection = connections.get(settings["connection"])
            if connection is None:
                raise InvalidInputError(f"reranker connection {settings['connection']!r} does not exist")
            api_key = connection.get("api_key")
        return HttpReranker(settings.get("url", ""), settings.get("model"), api_key,
                            float(settings.get("timeout", 30.0)), candidates)
    raise InvalidInputError(f"unknown reranker type {kind!r}; use 'cross-encoder' or 'http'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module present in sys.modules as None (blocked)
        return False


def _cross_encoder_class() -> Any:
    """sentence-transformers' CrossEncoder, which needs torch: an optional extra since kb's own model runs on ONNX."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise MissingExtraError("the cross-encoder reranker needs PyTorch and sentence-transformers, kb's optional "
                                f"'torch' extra: pip install 'kb[torch]' ({type(exc).__name__}: {exc})") from exc
    return CrossEncoder
