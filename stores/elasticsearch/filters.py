"""kb's filters and metadata as Elasticsearch fields and queries.

Each metadata key (hex encoded, so dots and odd characters are safe) is indexed as ``<key>_s`` (keyword),
``<key>_n`` (double) or ``<key>_b`` (boolean) by value kind, so kb's filter semantics hold exactly.
"""

from __future__ import annotations

from typing import Any

from kb_base.filters import And, Comparison, Filter, Not, Or


def _field(key: str, value: Any) -> str:
    kind = "b" if isinstance(value, bool) else "n" if isinstance(value, int | float) else "s"
    return f"m.k{key.encode().hex()}_{kind}"


def _typed_value(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def to_query(flt: Filter | None) -> dict[str, Any] | None:
    """kb filter → Elasticsearch bool query with the reference semantics (missing keys, kinds)."""
    if flt is None:
        return None
    if isinstance(flt, And):
        return {"bool": {"filter": [to_query(c) for c in flt.clauses]}}
    if isinstance(flt, Or):
        return {"bool": {"should": [to_query(c) for c in flt.clauses], "minimum_should_match": 1}}
    if isinstance(flt, Not):
        return {"bool": {"must_not": [to_query(flt.clause)]}}
    assert isinstance(flt, Comparison)

    def eq(value: Any) -> dict[str, Any]:
        return {"term": {_field(flt.key, value): _typed_value(value)}}

    if flt.op == "$eq":
        return eq(flt.value)
    if flt.op == "$ne":
        return {"bool": {"must_not": [eq(flt.value)]}}
    if flt.op in ("$in", "$nin"):
        any_of = {"bool": {"should": [eq(v) for v in flt.value], "minimum_should_match": 1}}
        return any_of if flt.op == "$in" else {"bool": {"must_not": [any_of]}}
    bound = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}[flt.op]
    return {"range": {_field(flt.key, flt.value): {bound: _typed_value(flt.value)}}}


def metadata_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, bool | int | float | str):
            out[_field(key, value).split(".", 1)[1]] = _typed_value(value)
    return out


def visible(generation: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{"range": {"kb_gen": {"lte": generation}}},
                                     {"range": {"kb_del": {"gt": generation}}}]
    if user:
        clauses.append(user)
    return {"bool": {"filter": clauses}}


