"""How kb records and filters look inside Chroma: metadata encoding and ``where`` translation.

Metadata. Chroma holds str/int/float/bool values and refuses some keys
(empty, starting with ``#`` or ``$``, ``chroma:document``). kb stores:

- str, bool and float values as they are;
- ints as floats, their keys listed in ``__kb_ints`` so they read back as
  ints. Chroma 1.5 compares a float operand with an int value after
  truncating the operand (``{"a": -1.5}`` matches ``a = -1``); with every
  number stored as a float, comparisons are exact. Ints beyond ±2^53 would
  lose digits as floats, so they are refused;
- lists, dicts and null JSON-encoded under ``__kb_j:<key>``: the plain key is
  absent in Chroma, and kb's reference semantics treat a non-scalar exactly
  like a missing key (``$eq``/``$in``/orderings false, ``$ne``/``$nin`` true);
- keys Chroma refuses, or that start with ``__kb_``, under ``__kb_k:<key>``.

Bookkeeping keys: ``__kb_id`` (the kb id), ``__kb_gen`` (generation that wrote
the physical record), ``__kb_del`` (generation that retired it, or NEVER).

Filters. ``to_where`` maps kb's filter tree onto Chroma's ``where``. Chroma
already agrees with kb on missing keys (``$ne``/``$nin`` match them) and on
bool vs number; ``$not`` is pushed down by De Morgan. What Chroma cannot
express exactly raises ``Inexpressible`` (ordering of strings, a negated
ordering, which would lose missing keys, and int operands beyond ±2^53);
the driver then answers from its SQLite copy of the metadata instead.
"""

from __future__ import annotations

import json
from typing import Any

from kb_base.errors import FilterError, InvalidInputError
from kb_base.filters import And, Comparison, Filter, Not, Or
from stores.generations import NEVER  # the scheme's constant, shared by every driver

ID, GEN, DEL = "__kb_id", "__kb_gen", "__kb_del"
INTS = "__kb_ints"
LEGACY_JSON = "__kb_json"  # first format: JSON values kept under their own key, listed here
JSON_PREFIX, KEY_PREFIX = "__kb_j:", "__kb_k:"
SYSTEM = frozenset({ID, GEN, DEL, INTS, LEGACY_JSON})
MAX_EXACT_INT = 2**53


class Inexpressible(FilterError):
    """A filter Chroma's ``where`` cannot evaluate exactly (the driver falls back to SQLite)."""


def chroma_key(key: str) -> str:
    if not key or key[0] in "#$" or key.startswith("__kb_") or key == "chroma:document":
        return KEY_PREFIX + key
    return key


def encode(record_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ints: list[str] = []
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"document {record_id!r}: metadata keys must be strings, got {key!r}")
        if isinstance(value, bool | str | float):
            out[chroma_key(key)] = value
        elif isinstance(value, int):
            if abs(value) > MAX_EXACT_INT:
                raise InvalidInputError(
                    f"document {record_id!r}: metadata {key!r} = {value} is beyond ±2^53, which a Chroma "
                    "knowledge bank cannot hold exactly; store it as a string")
            out[chroma_key(key)] = float(value)
            ints.append(key)
        else:
            out[JSON_PREFIX + key] = json.dumps(value, ensure_ascii=False)
    out[INTS] = json.dumps(ints, ensure_ascii=False)
    return out


def decode(metadata: dict[str, Any]) -> dict[str, Any]:
    ints = set(json.loads(metadata.get(INTS, "[]")))
    legacy_json = set(json.loads(metadata.get(LEGACY_JSON, "[]")))
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in SYSTEM:
            continue
        if key.startswith(JSON_PREFIX):
            out[key[len(JSON_PREFIX):]] = json.loads(value)
            continue
        user = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        if user in legacy_json:
            out[user] = json.loads(value)
        elif user in ints:
            out[user] = int(value)
        else:
            out[user] = value
    return out


def visible(metadata: dict[str, Any] | None, generation: int) -> bool:
    """Whether a physical record belongs to the state at ``generation``."""
    return metadata is not None and metadata.get(GEN, NEVER) <= generation < metadata.get(DEL, -1)


def visibility(generation: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{GEN: {"$lte": generation}}, {DEL: {"$gt": generation}}]
    if user:
        clauses.append(user)
    return {"$and": clauses}


# --- filters ---------------------------------------------------------------------------------


def to_where(flt: Filter | None) -> dict[str, Any] | None:
    """kb filter → Chroma ``where``; ``Inexpressible`` for what Chroma cannot evaluate exactly."""
    return None if flt is None else _where(flt, negate=False)


def _operand(key: str, value: Any) -> Any:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int) and abs(value) > MAX_EXACT_INT:
        raise Inexpressible(f"Chroma compares numbers as floats, so {value} on {key!r} cannot be compared exactly")
    return float(value)  # numbers are stored as floats (see encode)


def _kind(value: Any) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, int | float) else "str"


def _where(flt: Filter, negate: bool) -> dict[str, Any]:
    if isinstance(flt, Not):
        return _where(flt.clause, not negate)
    if isinstance(flt, And | Or):
        parts = [_where(c, negate) for c in flt.clauses]
        use_and = isinstance(flt, And) != negate  # De Morgan
        return parts[0] if len(parts) == 1 else {"$and" if use_and else "$or": parts}
    assert isinstance(flt, Comparison)
    key, op = chroma_key(flt.key), flt.op
    if negate:
        flipped = {"$eq": "$ne", "$ne": "$eq", "$in": "$nin", "$nin": "$in"}.get(op)
        if flipped is None:  # not(a > 1) also holds where a is missing or not a number: Chroma cannot say that
            raise Inexpressible(f"Chroma cannot negate {op} on {flt.key!r} exactly")
        op = flipped
    if op in ("$gt", "$gte", "$lt", "$lte") and isinstance(flt.value, str):
        raise Inexpressible(f"Chroma cannot order strings ({op} on {flt.key!r})")
    if op in ("$in", "$nin"):
        groups: dict[str, list[Any]] = {}
        for value in flt.value:  # Chroma wants one type per list
            groups.setdefault(_kind(value), []).append(_operand(flt.key, value))
        parts = [{key: {op: values}} for values in groups.values()]
        return parts[0] if len(parts) == 1 else {"$or" if op == "$in" else "$and": parts}
    return {key: {op: _operand(flt.key, flt.value)}}
