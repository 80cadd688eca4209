"""kb filters -> Azure AI Search OData ``$filter``, with kb's exact semantics.

Each metadata key is indexed under typed fields by value kind (``field_name``): ``_s`` Edm.String, ``_n``
Edm.Double (ints and floats, so 1 == 1.0 as in kb), ``_b`` Edm.Boolean. A record whose value has another
kind, or lacks the key, has null in that field, and OData comparisons with null are false (``ne``: true),
which is kb's rule: a comparison on a missing key is false except ``$ne``/``$nin``; booleans never equal
numbers; ordering compares numbers with numbers and strings with strings.

A field the index has never had (no record ever held that key with that kind) is null everywhere, so its
comparisons fold to constants here: the service would refuse a filter naming an unknown field.

Refused with FilterError (OData cannot say it exactly): integers beyond 2**53, which Edm.Double cannot hold
exactly, and strings with characters a JSON-carried OData literal cannot hold (NUL).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from kb_base.errors import FilterError
from kb_base.filters import And, Comparison, Filter, Not, Or

EXACT_INT = 2**53
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_]{1,100}$")
_DELIMITERS = ("|", ",", "~", "^", "\u2016", "\u00a6")
FieldLookup = Callable[[str, str], str | None]  # (key, kind) -> field name if the index has it


def kind_of(value: Any) -> str:
    return "b" if isinstance(value, bool) else "n" if isinstance(value, int | float) else "s"


def field_name(key: str, kind: str) -> str:
    """The typed field for a metadata key: readable for plain keys, a hash for the rest (Azure field names
    are letters, digits and underscores, at most 128 characters). ``m_`` and ``mh`` never collide."""
    if _PLAIN_KEY.match(key):
        return f"m_{key}_{kind}"
    return f"mh{hashlib.sha1(key.encode()).hexdigest()[:32]}_{kind}"


SCHEMA_KINDS = {"string": "s", "date": "s", "int": "n", "float": "n", "bool": "b"}
EDM_TYPES = {"s": "Edm.String", "n": "Edm.Double", "b": "Edm.Boolean"}


def schema_fields(schema: dict[str, str]) -> dict[str, str]:
    """Typed fields (name -> EDM type) for a metadata schema's keys, created with the index."""
    return {field_name(key, SCHEMA_KINDS[kind]): EDM_TYPES[SCHEMA_KINDS[kind]]
            for key, kind in schema.items() if kind in SCHEMA_KINDS}


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > EXACT_INT:
            raise FilterError(f"integer {value} is beyond 2**53: Azure AI Search compares numbers as Edm.Double "
                              "and cannot compare it exactly")
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if "\x00" in value:
        raise FilterError("a filter string cannot contain NUL characters on Azure AI Search")
    return "'" + value.replace("'", "''") + "'"


def typed_value(value: Any) -> Any:
    return float(value) if kind_of(value) == "n" else value


def in_list(name: str, values: list[Any]) -> str:
    """Membership of a field in values of its kind: search.in for strings (one clause), ``or`` for others."""
    if kind_of(values[0]) == "s":
        delimiter = next((d for d in _DELIMITERS if not any(d in v for v in values)), None)
        if delimiter is not None and all(v != "" and v.strip() == v for v in values):
            joined = delimiter.join(values)
            return f"search.in({name}, {literal(joined)}, {literal(delimiter)})"
    return "(" + " or ".join(f"{name} eq {literal(v)}" for v in values) + ")"


def _not(part: str | bool) -> str | bool:
    return (not part) if isinstance(part, bool) else f"not ({part})"


def _join(parts: list[str | bool], op: str) -> str | bool:
    absorbing = op == "or"  # True absorbs an "or", False an "and"
    if any(p is absorbing for p in parts):
        return absorbing
    kept = [p for p in parts if not isinstance(p, bool)]
    if not kept:
        return not absorbing
    return kept[0] if len(kept) == 1 else "(" + f" {op} ".join(kept) + ")"


def to_odata(flt: Filter | None, fields: FieldLookup) -> str | bool:
    """The OData expression for ``flt``, or True/False when it folds to a constant."""
    if flt is None:
        return True
    if isinstance(flt, And):
        return _join([to_odata(c, fields) for c in flt.clauses], "and")
    if isinstance(flt, Or):
        return _join([to_odata(c, fields) for c in flt.clauses], "or")
    if isinstance(flt, Not):
        return _not(to_odata(flt.clause, fields))
    assert isinstance(flt, Comparison)
    if flt.op in ("$eq", "$ne"):
        positive = _member(flt.key, [flt.value], fields)
        return positive if flt.op == "$eq" else _not(positive)
    if flt.op in ("$in", "$nin"):
        positive = _member(flt.key, list(flt.value), fields)
        return positive if flt.op == "$in" else _not(positive)
    name = fields(flt.key, kind_of(flt.value))
    if name is None:
        literal(flt.value)  # refuse what cannot be said even when it folds away
        return False
    op = {"$gt": "gt", "$gte": "ge", "$lt": "lt", "$lte": "le"}[flt.op]
    return f"{name} {op} {literal(flt.value)}"


def _member(key: str, values: list[Any], fields: FieldLookup) -> str | bool:
    by_kind: dict[str, list[Any]] = {}
    for value in values:
        literal(value)
        by_kind.setdefault(kind_of(value), []).append(value)
    parts: list[str | bool] = []
    for kind, group in by_kind.items():
        name = fields(key, kind)
        if name is None:
            parts.append(False)
        elif len(group) == 1:
            parts.append(f"{name} eq {literal(group[0])}")
        else:
            parts.append(in_list(name, group))
    return _join(parts, "or")
