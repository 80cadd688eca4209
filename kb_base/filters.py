"""kb's metadata filter language, shared by every store and by REST.

The syntax is Chroma's ``where`` style::

    {"source": "guide"}                                  # equality
    {"year": {"$gte": 2020}}                             # $eq $ne $gt $gte $lt $lte
    {"lang": {"$in": ["en", "fr"]}}                      # $in $nin
    {"$and": [{...}, {...}]}, {"$or": [...]}, {"$not": {...}}

A filter is parsed once into a small tree (``Comparison``, ``And``, ``Or``,
``Not``); each driver translates the tree into its own query language, and
``matches`` evaluates it in Python, which is the reference semantics that
the conformance suite holds every driver to:

- a comparison on a key the record does not have is false, except ``$ne``
  and ``$nin`` which are true (as in MongoDB and Elasticsearch ``must_not``);
- ``$not`` negates its whole sub-filter;
- ordering operators compare numbers with numbers and strings with strings
  (dates are ISO-8601 strings, so they order correctly); a value of another
  type never matches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kb_base.errors import FilterError
from kb_base.input_checks import INT64_MAX, INT64_MIN, string_problem

Scalar = str | int | float | bool

COMPARISON_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
MAX_DEPTH = 32
MAX_IN_VALUES = 10_000


@dataclass(frozen=True)
class Comparison:
    key: str
    op: str
    value: Any  # a Scalar, or a tuple of Scalars for $in / $nin


@dataclass(frozen=True)
class And:
    clauses: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    clauses: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    clause: Filter


Filter = Comparison | And | Or | Not


def parse_filter(raw: Mapping[str, Any] | Filter | None) -> Filter | None:
    """Parse a where-style dict into a filter tree; ``None`` or ``{}`` means no filter."""
    if raw is None:
        return None
    if isinstance(raw, (Comparison, And, Or, Not)):
        return raw
    if not isinstance(raw, Mapping):
        raise FilterError(f"a filter must be a JSON object, got {type(raw).__name__}")
    if not raw:
        return None
    return _parse_node(raw, path="filter", depth=0)


def _parse_node(raw: Any, path: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise FilterError(f"{path}: filter nested deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, Mapping) or not raw:
        raise FilterError(f"{path}: expected a non-empty object, got {raw!r}"[:300])
    clauses: list[Filter] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise FilterError(f"{path}: keys must be strings, got {key!r}")
        sub_path = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{sub_path}: expected a non-empty list of filters")
            parts = tuple(_parse_node(v, f"{sub_path}[{i}]", depth + 1) for i, v in enumerate(value))
            clauses.append(And(parts) if key == "$and" else Or(parts))
        elif key == "$not":
            clauses.append(Not(_parse_node(value, sub_path, depth + 1)))
        elif key.startswith("$"):
            raise FilterError(
                f"{sub_path}: unknown operator {key!r}; logical operators are {', '.join(LOGICAL_OPERATORS)}"
            )
        else:
            clauses.extend(_parse_field(key, value, sub_path))
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def _parse_field(key: str, value: Any, path: str) -> list[Filter]:
    _check_key(key, path)
    if isinstance(value, Mapping):
        if not value:
            raise FilterError(f"{path}: empty operator object")
        out: list[Filter] = []
        for op, operand in value.items():
            if op not in COMPARISON_OPERATORS:
                raise FilterError(
                    f"{path}: unknown operator {op!r}; comparison operators are "
                    + ", ".join(COMPARISON_OPERATORS)
                )
            out.append(Comparison(key, op, _check_operand(op, operand, f"{path}.{op}")))
        return out
    return [Comparison(key, "$eq", _check_operand("$eq", value, path))]


def _check_key(key: str, path: str) -> None:
    if not key or len(key) > 256 or any(c in key for c in '"\\\x00') or not key.isprintable():
        raise FilterError(f"{path}: invalid metadata key {key!r}")


def _check_scalar(value: Any, path: str) -> Scalar:
    if isinstance(value, str):
        problem = string_problem(value)
        if problem is not None:
            raise FilterError(f"{path}: the value {problem}")
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise FilterError(f"{path}: {str(value)[:30]} is an integer beyond 64 bits, which no store holds")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{path}: {value!r} is not a finite number")
        return value
    raise FilterError(f"{path}: expected a string, number or boolean, got {type(value).__name__}")


def _check_operand(op: str, operand: Any, path: str) -> Any:
    if op in ("$in", "$nin"):
        if not isinstance(operand, list | tuple) or not operand:
            raise FilterError(f"{path}: expected a non-empty list")
        if len(operand) > MAX_IN_VALUES:
            raise FilterError(f"{path}: at most {MAX_IN_VALUES} values")
        return tuple(_check_scalar(v, f"{path}[{i}]") for i, v in enumerate(operand))
    value = _check_scalar(operand, path)
    if op in ("$gt", "$gte", "$lt", "$lte") and isinstance(value, bool):
        raise FilterError(f"{path}: ordering operators do not apply to booleans")
    return value


# --- evaluation (the reference semantics) ---------------------------------------------------

_MISSING = object()


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return isinstance(a, str) and isinstance(b, str)


def _equal(a: Any, b: Any) -> bool:
    return _same_kind(a, b) and a == b


def matches(flt: Filter | None, metadata: Mapping[str, Any]) -> bool:
    """Whether ``metadata`` satisfies ``flt`` (``None`` matches everything)."""
    if flt is None:
        return True
    if isinstance(flt, And):
        return all(matches(c, metadata) for c in flt.clauses)
    if isinstance(flt, Or):
        return any(matches(c, metadata) for c in flt.clauses)
    if isinstance(flt, Not):
        return not matches(flt.clause, metadata)
    actual = metadata.get(flt.key, _MISSING)
    op, expected = flt.op, flt.value
    if op == "$ne":
        return actual is _MISSING or not _equal(actual, expected)
    if op == "$nin":
        return actual is _MISSING or not any(_equal(actual, v) for v in expected)
    if actual is _MISSING:
        return False
    if op == "$eq":
        return _equal(actual, expected)
    if op == "$in":
        return any(_equal(actual, v) for v in expected)
    if isinstance(actual, bool) or not _same_kind(actual, expected):
        return False
    if op == "$gt":
        return actual > expected
    if op == "$gte":
        return actual >= expected
    if op == "$lt":
        return actual < expected
    return actual <= expected  # $lte


def filter_keys(flt: Filter | None) -> set[str]:
    """Every metadata key a filter mentions."""
    if flt is None:
        return set()
    if isinstance(flt, Comparison):
        return {flt.key}
    if isinstance(flt, Not):
        return filter_keys(flt.clause)
    return set().union(*(filter_keys(c) for c in flt.clauses))


def comparisons(flt: Filter | None) -> list[Comparison]:
    if flt is None:
        return []
    if isinstance(flt, Comparison):
        return [flt]
    if isinstance(flt, Not):
        return comparisons(flt.clause)
    return [c for clause in flt.clauses for c in comparisons(clause)]


def to_where(flt: Filter | None) -> dict[str, Any]:
    """The canonical where-style dict of a filter tree (used by REST and Chroma)."""
    if flt is None:
        return {}
    if isinstance(flt, Comparison):
        value = list(flt.value) if isinstance(flt.value, tuple) else flt.value
        return {flt.key: {flt.op: value}}
    if isinstance(flt, Not):
        return {"$not": to_where(flt.clause)}
    key = "$and" if isinstance(flt, And) else "$or"
    return {key: [to_where(c) for c in flt.clauses]}
