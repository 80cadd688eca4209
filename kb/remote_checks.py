"""The remote client's input checks: the embedded client's own, run before anything is sent.

Whatever the embedded client refuses without looking at stored data (a lone surrogate, a NUL, an integer
beyond 64 bits, NaN, deep nesting, an empty or duplicate id, a filter that does not parse, a value the
knowledge bank's metadata schema does not take) the remote client refuses here with the same class and the
same message, naming the document, its position and the key, before a byte goes out: nothing is staged,
nothing is written. It is also what keeps raw Python errors of the JSON encoder or of URL quoting
(``UnicodeEncodeError``, ``ValueError: Out of range float values``, ``TypeError: not JSON serializable``) from
reaching the caller. The schema is the one the handle read when it was opened, as the embedded handle does
(``refresh()`` re-reads it); the server checks again against its own, and answers with the same classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from kb_base.errors import InvalidInputError
from kb_base.filters import parse_filter, to_where
from kb_base.input_checks import (
    check_string,
    check_text,
    check_value,
    check_write_ids,
    string_problem,
)
from kb_base.search import SearchRequest
from writers.schema import validate_filter, validate_metadata


def document_bodies(texts: Sequence[Any], metadatas: Sequence[Any], ids: Sequence[Any],
                    vectors: Sequence[Any] | None, schema: Mapping[str, str]) -> list[dict[str, Any]]:
    """The JSON bodies of one write's documents, checked in the embedded writer's order (ids, then each
    document's text and metadata), with metadata normalised as it would store it (dates as ISO-8601, numpy
    numbers as numbers, ``-0.0`` as ``0.0``)."""
    if not (len(texts) == len(metadatas) == len(ids)) or (vectors is not None and len(vectors) != len(texts)):
        raise InvalidInputError("texts, metadatas, ids (and vectors) must have the same length")
    check_write_ids(ids)
    bodies = []
    for position, (doc_id, text, metadata) in enumerate(zip(ids, texts, metadatas, strict=True)):
        label = f"document {doc_id!r} (position {position})"
        if not isinstance(text, str):
            raise InvalidInputError(f"{label}: page_content must be a string, got {type(text).__name__}")
        check_text(text, f"{label}: page_content")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidInputError(f"{label}: metadata must be a mapping")
        body: dict[str, Any] = {"id": doc_id, "text": text,
                                "metadata": validate_metadata(schema, metadata or {}, label)}
        if vectors is not None:
            body["vector"] = vector_list(vectors[position], f"{label}: vector")
        bodies.append(body)
    return bodies


def vector_list(vector: Any, where: str) -> list[float]:
    """A vector as a list of finite floats (float32 values, as every store keeps them)."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where} must be a list of numbers ({exc})") from exc
    if array.ndim != 1 or array.size == 0:
        raise InvalidInputError(f"{where} must be one-dimensional and non-empty")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{where} has NaN or infinite values")
    return array.tolist()


def filter_json(raw: Any, schema: Mapping[str, str]) -> dict[str, Any] | None:
    """A metadata filter parsed and checked as the embedded client checks it, as the JSON the server reads."""
    flt = validate_filter(schema, parse_filter(raw))
    return to_where(flt) if flt is not None else None


def search_body(request: SearchRequest, schema: Mapping[str, str]) -> dict[str, Any]:
    """A search request checked as ``kb.search.execute_search`` checks it first, as its JSON body."""
    request.validate()
    body = {k: v for k, v in vars(request).items() if v is not None and k not in ("candidates", "filter", "vector")}
    flt = filter_json(request.filter, schema)
    if flt is not None:
        body["filter"] = flt
    if request.vector is not None:
        body["vector"] = vector_list(request.vector, "query vector")
    for key in ("lambda_mult", "score_threshold", "fusion_weight"):
        if isinstance(body.get(key), float) and not math.isfinite(body[key]):
            raise InvalidInputError(f"{key} must be a finite number, got {body[key]!r}")
    return body


def settings_body(settings: Any, owner: str) -> Any:
    """Settings checked as the catalog checks what it stores (``kb.catalog.settings_json``)."""
    return check_value(settings, f"{owner}: settings")


def path_segment(value: Any, what: str) -> str:
    """A name or id as one URL path segment; InvalidInputError if no server could have such a name."""
    return quote(check_string(value, what), safe="")


def query_params(params: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Query parameters without None; each string one a URL can carry."""
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, str) and (problem := string_problem(value)) is not None:
            raise InvalidInputError(f"{what} {key} {problem}")
        out[key] = value
    return out


def texts_to_embed(texts: Any) -> list[str]:
    """Texts for an embedding model, refused as the embedded client's embedder refuses them
    (``kb.embedding_cache``): a model would fail on them and answer as if it were down."""
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InvalidInputError(f"the texts to embed must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"text #{i} to embed is a {type(text).__name__}, not a string")
        problem = string_problem(text)
        if problem is not None:
            raise InvalidInputError(f"text #{i} to embed {problem}")
    return list(texts)
