"""Translate kb filters into SQLite expressions over a JSON metadata column.

``json_type`` keeps booleans, numbers and strings apart (``json_extract``
alone turns ``true`` into 1), so the SQL has the same semantics as
``kb_base.filters.matches``. Every comparison is wrapped in ``COALESCE(..., 0)``
so that a missing key gives false rather than NULL, which would poison
``NOT``. Values are always bound parameters; the JSON path is a literal
built from a key the parser has already checked (no ``"`` or ``\\``), with
single quotes doubled.
"""

from __future__ import annotations

from typing import Any

from kb_base.filters import And, Comparison, Filter, Not, Or

_SQL_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _path_literal(key: str) -> str:
    return "'$.\"" + key.replace("'", "''") + "\"'"


def _typed(column: str, path: str, value: Any, op: str, params: list[Any]) -> str:
    json_type = f"json_type({column}, {path})"
    if isinstance(value, bool):
        return f"{json_type} = '{'true' if value else 'false'}'"
    kind = "IN ('integer', 'real')" if isinstance(value, int | float) else "= 'text'"
    params.append(value)
    return f"({json_type} {kind} AND json_extract({column}, {path}) {op} ?)"


def _comparison(node: Comparison, column: str, params: list[Any]) -> str:
    path = _path_literal(node.key)
    if node.op in ("$eq", "$ne"):
        expr = f"COALESCE({_typed(column, path, node.value, '=', params)}, 0)"
        return expr if node.op == "$eq" else f"NOT {expr}"
    if node.op in ("$in", "$nin"):
        parts = [_typed(column, path, value, "=", params) for value in node.value]
        expr = "COALESCE((" + " OR ".join(parts) + "), 0)"
        return expr if node.op == "$in" else f"NOT {expr}"
    return f"COALESCE({_typed(column, path, node.value, _SQL_OPS[node.op], params)}, 0)"


def _node(flt: Filter, column: str, params: list[Any]) -> str:
    if isinstance(flt, Comparison):
        return _comparison(flt, column, params)
    if isinstance(flt, Not):
        return f"NOT ({_node(flt.clause, column, params)})"
    joiner = " AND " if isinstance(flt, And) else " OR "
    assert isinstance(flt, And | Or)
    return "(" + joiner.join(_node(c, column, params) for c in flt.clauses) + ")"


def filter_to_sql(flt: Filter | None, column: str = "metadata") -> tuple[str, list[Any]]:
    """A SQL boolean expression and its parameters; ``("1", [])`` for no filter."""
    if flt is None:
        return "1", []
    params: list[Any] = []
    return _node(flt, column, params), params
