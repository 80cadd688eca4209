"""Checks every string and metadata value kb stores or searches with, at the boundary, once.

What is refused, and why:
- a lone UTF-16 surrogate (``"\\ud800"``, legal in JSON and in a Python ``str``): no store can encode it
  (SQLite and Elasticsearch want UTF-8, the tokenisers and models too);
- a NUL character in an id, a key or a value: C code behind the stores cuts strings at NUL;
- bytes that are not UTF-8 where text is expected;
- a metadata key over ``MAX_KEY_CHARS`` characters, a string value over ``MAX_VALUE_BYTES`` bytes of UTF-8
  (Elasticsearch refuses keyword terms longer than 32,766 bytes), a text over ``MAX_TEXT_CHARS``;
- an integer outside 64 bits (SQLite, Elasticsearch and orjson hold 64-bit integers);
- NaN and infinities anywhere in metadata (JSON cannot hold them);
- metadata nested deeper than ``MAX_DEPTH`` lists or objects.
``-0.0`` is accepted and stored as ``0.0`` (it equals ``0.0`` in every filter, and a store could not tell
them apart reliably). Each failure is an ``InvalidInputError`` naming the document (or the request part)
and the field, raised before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

from kb_base.errors import InvalidInputError

MAX_ID_CHARS = 512
MAX_KEY_CHARS = 256
MAX_VALUE_BYTES = 32_766
MAX_TEXT_CHARS = 2_000_000
MAX_DEPTH = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def string_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None. Cheap for ASCII (the common case)."""
    if "\x00" in value:
        return f"holds a NUL character at offset {value.index(chr(0))}"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"holds a lone UTF-16 surrogate {value[exc.start]!r} at offset {exc.start}, "
                    "which is not valid Unicode")
    return None


def check_string(value: Any, where: str, max_chars: int | None = None) -> str:
    """``value`` if it is a storable string, else InvalidInputError naming ``where``."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{where} must be a string, got {type(value).__name__}")
    problem = string_problem(value)
    if problem is not None:
        raise InvalidInputError(f"{where} {problem}")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidInputError(f"{where} has {len(value)} characters; the limit is {max_chars}")
    return value


def check_id(value: Any, where: str) -> str:
    if isinstance(value, str) and not value:
        raise InvalidInputError(f"{where} is empty")
    return check_string(value, where, MAX_ID_CHARS)


def check_ids(ids: Iterable[Any], what: str = "ids") -> list[str]:
    """A list of document ids (for get and delete): each a storable non-empty string."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise InvalidInputError(f"{what} must be a list of strings")
    listed = list(ids)
    for position, doc_id in enumerate(listed):
        check_id(doc_id, f"{what}[{position}]")
    return listed


def check_unique_ids(ids: Sequence[str]) -> None:
    """Duplicate ids inside one write would make its outcome depend on the order of the batch."""
    if len(set(ids)) == len(ids):
        return
    seen: set[str] = set()
    for position, doc_id in enumerate(ids):
        if doc_id in seen:
            first = list(ids).index(doc_id)
            raise InvalidInputError(f"document {doc_id!r} (position {position}): the same id is already at "
                                    f"position {first} of this write; each id may appear once per write")
        seen.add(doc_id)


def check_write_ids(ids: Sequence[Any]) -> None:
    """The ids of one write: each a storable non-empty string of at most MAX_ID_CHARS, none twice."""
    if _plain_ids(ids):
        check_unique_ids(ids)
        return
    for position, doc_id in enumerate(ids):
        if type(doc_id) is not str or not doc_id or len(doc_id) > MAX_ID_CHARS or string_problem(doc_id):
            label = f"document {doc_id!r}"[:80] if isinstance(doc_id, str) else "a document"
            check_id(doc_id, f"{label} (position {position}): id")
    check_unique_ids(ids)


def _plain_ids(ids: Sequence[Any]) -> bool:
    """Whether every id is an ASCII ``str`` of 1 to MAX_ID_CHARS characters without NUL, by loops in C (a bulk
    write's ids, 100k at a time); anything else is checked id by id."""
    return (set(map(type, ids)) <= {str} and min(map(len, ids), default=1) > 0
            and max(map(len, ids), default=0) <= MAX_ID_CHARS and all(map(str.isascii, ids))
            and not any(map(str.__contains__, ids, repeat("\x00"))))


def check_text(value: Any, where: str) -> str:
    return check_string(value, where, MAX_TEXT_CHARS)


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise InvalidInputError(f"{where}: metadata key {key!r} is not a string")
    if not key:
        raise InvalidInputError(f"{where}: a metadata key is empty")
    problem = string_problem(key)
    if problem is not None:
        raise InvalidInputError(f"{where}: metadata key {key!r} {problem}")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidInputError(f"{where}: metadata key {key[:40]!r}... has {len(key)} characters; "
                                f"the limit is {MAX_KEY_CHARS}")
    return key


def check_value(value: Any, where: str, depth: int = 0) -> Any:
    """A metadata value (scalar, list or object) checked all the way down; returns it with -0.0 as 0.0."""
    if isinstance(value, str):
        problem = string_problem(value)
        if problem is not None:
            raise InvalidInputError(f"{where} {problem}")
        if len(value) * 4 > MAX_VALUE_BYTES and len(value.encode("utf-8")) > MAX_VALUE_BYTES:
            raise InvalidInputError(f"{where} is {len(value.encode('utf-8'))} bytes of UTF-8; "
                                    f"the limit for a metadata value is {MAX_VALUE_BYTES}")
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidInputError(f"{where} is an integer beyond 64 bits ({str(value)[:30]}...); "
                                    "stores hold integers from -2**63 to 2**63-1")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where} is {value!r}, which JSON cannot hold")
        return 0.0 if value == 0.0 else value
    if isinstance(value, Mapping | list | tuple):
        if depth >= MAX_DEPTH:
            raise InvalidInputError(f"{where} is nested deeper than {MAX_DEPTH} levels of lists and objects")
        if isinstance(value, Mapping):
            return {_check_key(k, where): check_value(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        return [check_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    return value  # other types (dates, numpy numbers) are the schema's to accept or refuse


def check_metadata_key(key: Any, doc_label: str) -> str:
    return _check_key(key, doc_label)


def check_metadata(metadata: Mapping[str, Any], doc_label: str) -> dict[str, Any]:
    """One document's metadata with every key and value checked (see the module's docstring)."""
    return {_check_key(key, doc_label): check_value(value, f"{doc_label}: metadata key {key!r}", 1)
            for key, value in metadata.items()}
