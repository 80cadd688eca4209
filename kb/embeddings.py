"""Embedding models: the local all-MiniLM-L6-v2 and OpenAI-compatible endpoints.

Model ids follow the reference's ``<type>:<connection>:<model>`` shape:
``local:all-MiniLM-L6-v2`` for the bundled model (``local:all-MiniLM-L6-v2-int8``
for the same weights with int8 matrix products), ``openai:<connection>:<model>``
for a model behind an OpenAI-compatible ``/embeddings`` endpoint. Models
return raw float32 rows; caching lives in ``kb.embedding_cache``.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb import local_minilm
from kb.local_minilm import (
    LOCAL_MINILM_DESCRIPTION,
    LOCAL_MINILM_DIMENSION,
    LOCAL_MINILM_ID,
    LOCAL_MINILM_INT8_DESCRIPTION,
    LOCAL_MINILM_INT8_ID,
)
from kb_base.errors import EmbeddingError, InvalidInputError, UnknownModelError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CONNECTION_TYPE = "openai-compatible"


# The model of a new knowledge bank that names none. The rule (issue 30; figures in
# docs/benchmarks/embedding-int8.json, applied by ``default_model_for`` and checked by a test): the int8 model
# once it meets both its quality targets (cosine to fp32 >= 0.995 on every SciFact abstract, nDCG@10 within
# 0.003 of fp32 for similarity and hybrid) and its speed targets (>= 2.0x sentence-transformers on SciFact
# abstracts where the CPU has AVX-512 VNNI, >= 1.6x with AVX2 only; one short query <= 2 ms); else fp32.
# A default applies on every machine, so it needs figures of both CPU classes, the AVX2-only one included
# (its vectors: ``avx2_quality``, checked under emulation; its speed: ``speed_avx2_only``, which only such a
# machine can measure). A knowledge bank records its model, so changing this never changes an existing one.
DEFAULT_EMBEDDING_LLM_ID = LOCAL_MINILM_ID


def _speed_met(speed: Mapping[str, Any] | None, needed: float) -> bool:
    return (speed is not None and speed["int8_over_sentence_transformers"] >= needed
            and speed["int8_query_ms"] <= 2.0)


def default_model_for(figures: Mapping[str, Any]) -> str:
    """The default model the rule above picks for these measured figures."""
    quality = figures["quality"]
    quality_met = (bool(quality["full_corpus"]) and quality["min_cosine"] >= 0.995
                   and all(abs(loss) <= 0.003 for loss in quality["ndcg_loss"].values())
                   and (figures.get("avx2_quality") or {}).get("min_cosine", 0.0) >= 0.995)
    vnni = figures["speed"] if "avx512_vnni" in figures["speed"]["int8_flags"] else None
    speed_met = _speed_met(vnni, 2.0) and _speed_met(figures.get("speed_avx2_only"), 1.6)
    return LOCAL_MINILM_INT8_ID if quality_met and speed_met else LOCAL_MINILM_ID


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


class LocalMiniLMModel(EmbeddingModel):
    """all-MiniLM-L6-v2 on onnxruntime (``kb.local_minilm``), fp32 or int8; loaded once per process, never
    downloaded."""

    # class-level: every instance of a variant shares its one loaded runtime
    _runtimes: dict[bool, Any] = {}
    _load_lock = threading.Lock()

    def __init__(self, int8: bool = False) -> None:
        self.int8 = int8
        self.id = LOCAL_MINILM_INT8_ID if int8 else LOCAL_MINILM_ID
        self.description = LOCAL_MINILM_INT8_DESCRIPTION if int8 else LOCAL_MINILM_DESCRIPTION

    @property
    def dimension(self) -> int | None:
        return LOCAL_MINILM_DIMENSION

    def runtime(self) -> Any:
        with self._load_lock:
            if self.int8 not in self._runtimes:
                self._runtimes[self.int8] = local_minilm.load(int8=self.int8)
            return self._runtimes[self.int8]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, LOCAL_MINILM_DIMENSION), dtype=np.float32)
        return local_minilm.embed_safely(self.runtime(), texts)


def preload_local_model(llm_id: str = LOCAL_MINILM_ID) -> threading.Thread:
    """Start loading a local model in a daemon thread, so that it overlaps a server's imports and start-up.

    A failure is left for the first real use to report (the server's warm-up logs it)."""

    def load() -> None:
        try:
            LocalMiniLMModel(int8=llm_id == LOCAL_MINILM_INT8_ID).runtime()
        except Exception:  # noqa: S110 - reported by the first caller, which retries the load
            pass

    thread = threading.Thread(target=load, name="kb-model-preload", daemon=True)
    thread.start()
    return thread


# the name this class had while it ran on sentence-transformers; kept for code written against it
LocalSentenceTransformerModel = LocalMiniLMModel


class OpenAICompatibleModel(EmbeddingModel):
    """A model behind an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint."""

    # the statuses the openai client itself retries: timeouts, lock conflicts, rate limits, server errors
    RETRY_STATUSES = frozenset({408, 409, 429})
    MAX_RETRY_AFTER = 30.0  # a server asking for longer is treated as down rather than waited for
    MAX_BACKOFF = 8.0

    def __init__(self, id: str, base_url: str, api_key: str | None, model: str, batch_size: int = 256,
                 timeout: float = 30.0, max_retries: int = 4, dimensions: int | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"embedding model {id}: base_url must start with http:// or https://, "
                                    f"got {base_url!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.isascii()
                                    or not api_key.isprintable()):
            # httpx would fail deep inside header encoding with an error that may quote the key
            raise InvalidInputError(f"embedding model {id}: the api_key must be printable ASCII text")
        self.id = id
        self.description = f"{model} at {base_url} (OpenAI-compatible)"
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self.batch_size = _positive_int(batch_size, "batch_size", id)
        self.max_retries = _positive_int(max_retries, "max_retries", id, minimum=0)
        self.requested_dimensions = None if dimensions is None else _positive_int(dimensions, "dimensions", id)
        self._dimension: int | None = self.requested_dimensions
        self._secret = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise InvalidInputError(f"embedding model {id}: timeout must be a number of seconds, "
                                    f"got {timeout!r}") from None
        # imported here: httpx (and the rich it pulls in) costs 0.2 s to import, which processes that only use
        # the local model (every write with precomputed vectors) should not pay
        import httpx

        # httpx.Client is thread-safe and pools connections: one per model, shared by every caller
        self._http = httpx.Client(timeout=timeout, headers=headers)

    @property
    def dimension(self) -> int | None:
        return self._dimension

    def close(self) -> None:
        self._http.close()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        parts = [self._embed_batch(list(texts[i : i + self.batch_size]))
                 for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts, axis=0)

    @property
    def _where(self) -> str:
        return f"embedding model {self.id} (model {self.model!r} at {self.url})"

    def _redact(self, text: str) -> str:
        # servers echo keys back ("Incorrect API key provided: sk-..."): never let one reach a message or a log
        return text.replace(self._secret, "***") if self._secret else text

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        import httpx  # already loaded by __init__

        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                problem = f"timed out ({type(exc).__name__}, timeout {self._http.timeout.read}s)"
            except httpx.TransportError as exc:
                problem = f"could not connect: {type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in self.RETRY_STATUSES and response.status_code < 500:
                    raise EmbeddingError(self._redact(f"{self._where} refused the request: {problem}"))
            if attempt == self.max_retries:
                raise EmbeddingError(self._redact(f"{self._where} failed after {attempt + 1} attempt(s); "
                                                  f"last error: {problem}"))
            delay = self._delay(attempt, response)
            log.warning("%s", self._redact(f"{self._where}: {problem}; retry {attempt + 1} in {delay:.2f}s"))
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        # full jitter around an exponential backoff, so that many clients do not retry in lockstep
        delay = min(self.MAX_BACKOFF, 0.25 * 2**attempt) * (0.5 + random.random())
        asked = _retry_after(response) if response is not None else None
        return delay if asked is None else min(self.MAX_RETRY_AFTER, asked)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.requested_dimensions:
            body["dimensions"] = self.requested_dimensions
        response = self._post(body)
        vectors = self._parse(response, len(texts))
        dimension = int(vectors.shape[1])
        if self._dimension is not None and dimension != self._dimension:
            raise EmbeddingError(f"{self._where} returned {dimension} dimensions, expected {self._dimension}")
        self._dimension = dimension
        return vectors

    def _parse(self, response: httpx.Response, count: int) -> np.ndarray:
        def malformed(why: str) -> EmbeddingError:
            return EmbeddingError(self._redact(f"{self._where} answered HTTP {response.status_code} with a "
                                               f"malformed body: {why}"))

        try:
            data = response.json()["data"]
            indexes = [item["index"] for item in data]
            rows = [item["embedding"] for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise malformed(f"{type(exc).__name__}: {exc}; body starts {response.text[:200]!r}") from exc
        if len(rows) != count:
            raise malformed(f"{len(rows)} embeddings for {count} inputs")
        if sorted(i for i in indexes if type(i) is int) != list(range(count)):  # bool is an int too
            raise malformed(f"the indexes are not 0..{count - 1}: {indexes[:20]}")
        if any(not isinstance(row, list) for row in rows):
            raise malformed("an embedding is not a list of numbers (base64 answer to a float request?)")
        lengths = {len(row) for row in rows}
        if len(lengths) != 1 or 0 in lengths:
            raise malformed(f"embeddings of inconsistent or zero length {sorted(lengths)}")
        # no dtype: numpy must not quietly turn "0.5" or True into numbers, so check what it inferred
        matrix = np.array(rows)
        if matrix.dtype.kind not in "fiu":
            raise malformed(f"an embedding holds non-numeric values (inferred {matrix.dtype})")
        order = np.argsort(np.asarray(indexes))
        vectors = np.ascontiguousarray(matrix[order], dtype=np.float32)
        if not np.all(np.isfinite(vectors)):
            raise malformed("NaN, infinite or out-of-float32-range values")
        return vectors


def _positive_int(value: Any, name: str, llm_id: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < minimum:
        raise InvalidInputError(f"embedding model {llm_id}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        if seconds == seconds:  # not NaN
            return max(0.0, seconds)
    return None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:300]
    except ValueError:
        return response.text[:300] or "(empty body)"


_local_models: dict[str, LocalMiniLMModel] = {}
_local_lock = threading.Lock()


def build_model(llm_id: str, connections: Mapping[str, Mapping[str, Any]]) -> EmbeddingModel:
    """The model behind ``llm_id``; UnknownModelError lists the ids that do exist."""
    if llm_id in (LOCAL_MINILM_ID, LOCAL_MINILM_INT8_ID):
        with _local_lock:
            if llm_id not in _local_models:
                _local_models[llm_id] = LocalMiniLMModel(int8=llm_id == LOCAL_MINILM_INT8_ID)
            return _local_models[llm_id]
    parts = llm_id.split(":", 2) if isinstance(llm_id, str) else []
    available = ", ".join(i for i, _ in list_model_ids(connections))
    if len(parts) != 3 or parts[0] != "openai":
        raise UnknownModelError(f"unknown embedding model {llm_id!r}: ids are {LOCAL_MINILM_ID!r}, "
                                f"{LOCAL_MINILM_INT8_ID!r} or 'openai:<connection>:<model>'; available: {available}")
    _, connection_name, model = parts
    connection = connections.get(connection_name)
    if connection is None or connection.get("type") != CONNECTION_TYPE:
        names = sorted(n for n, c in connections.items() if c.get("type") == CONNECTION_TYPE)
        raise UnknownModelError(f"embedding model {llm_id!r}: no {CONNECTION_TYPE} connection named "
                                f"{connection_name!r} (there are {names}); available: {available}")
    models = list(connection.get("models") or [])
    if model not in models:
        raise UnknownModelError(f"embedding model {llm_id!r}: connection {connection_name!r} offers {models}")
    base_url = connection.get("base_url")
    if not base_url:
        raise InvalidInputError(f"connection {connection_name!r} has no base_url")
    return OpenAICompatibleModel(llm_id, base_url, connection.get("api_key"), model,
                                 batch_size=connection.get("batch_size", 256), timeout=connection.get("timeout", 30.0),
                                 max_retries=connection.get("max_retries", 4),
                                 dimensions=connection.get("dimensions"))


def list_model_ids(connections: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(id, description)`` of every model ``build_model`` accepts with these connections."""
    out = [(LOCAL_MINILM_ID, LOCAL_MINILM_DESCRIPTION), (LOCAL_MINILM_INT8_ID, LOCAL_MINILM_INT8_DESCRIPTION)]
    for name, connection in sorted(connections.items()):
        if connection.get("type") == CONNECTION_TYPE:
            for model in connection.get("models") or []:
                out.append((f"openai:{name}:{model}", f"{model} at {connection.get('base_url')} (OpenAI-compatible)"))
    return out
