"""Metadata schemas: which metadata keys a knowledge bank holds, and their types.

A schema maps keys to one of ``string``, ``int``, ``float``, ``bool`` and
``date``. When a knowledge bank declares one, every document written to it is
checked (and normalised: dates become ISO-8601 strings, ints become floats for
``float`` keys), and every metadata filter is checked against it. Keys starting
with ``KB_`` are reserved for kb's own metadata (written by the metadata
formatter) and are valid under any schema.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Mapping
from typing import Any

from kb_base.errors import FilterError, SchemaError
from kb_base.filters import Filter, comparisons
from kb_base.input_checks import INT64_MAX, INT64_MIN, MAX_KEY_CHARS, check_metadata

# A string value this short cannot pass MAX_VALUE_BYTES of UTF-8 (4 bytes per character at most).
SHORT_VALUE_CHARS = 8191

SCHEMA_TYPES = ("string", "int", "float", "bool", "date")
RESERVED_PREFIX = "KB_"


def validate_schema_definition(schema: Mapping[str, str] | None) -> dict[str, str]:
    """Check a schema as given to ``settings.set_metadata_schema``."""
    if schema is None:
        return {}
    if not isinstance(schema, Mapping):
        raise SchemaError(f"a metadata schema must be a mapping of key to type, got {type(schema).__name__}")
    out: dict[str, str] = {}
    for key, kind in schema.items():
        if not isinstance(key, str) or not key or any(c in key for c in '"\\\x00') or not key.isprintable():
            raise SchemaError(f"invalid metadata key {key!r} in schema")
        if key.startswith(RESERVED_PREFIX):
            raise SchemaError(f"metadata key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        if kind not in SCHEMA_TYPES:
            raise SchemaError(f"metadata key {key!r}: unknown type {kind!r}; types are {', '.join(SCHEMA_TYPES)}")
        out[key] = kind
    return out


def _normalise_date(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if len(value) == 10:  # a bare date stays a bare date
            return parsed.date().isoformat()
        return _normalise_date(parsed)
    return None


def coerce_value(kind: str, value: Any) -> tuple[bool, Any]:
    """Return (ok, normalised value) for ``value`` under schema type ``kind``."""
    if kind == "string":
        return isinstance(value, str), value
    if kind == "bool":
        if isinstance(value, bool):
            return True, value
        return False, value
    if isinstance(value, bool):
        return False, value
    if kind == "int":
        if isinstance(value, numbers.Integral):
            return True, int(value)
        return False, value
    if kind == "float":
        if isinstance(value, numbers.Real) and math.isfinite(float(value)):
            return True, float(value)
        return False, value
    normalised = _normalise_date(value)
    return normalised is not None, normalised


# Values that are valid and already normalised as they are, by schema type ("" when there is no schema, or
# for reserved keys); floats must also be finite. Checked with ``type(...) is``: subclasses take the full path.
PLAIN_TYPES: dict[str, tuple[type, ...]] = {"": (str, int, bool, float, type(None)), "string": (str, type(None)),
                                             "int": (int, type(None)), "float": (float, type(None)),
                                             "bool": (bool, type(None)), "date": (type(None),)}


def plain_metadata(schema: Mapping[str, str], metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """A copy of ``metadata`` if ``validate_metadata`` would return it unchanged, else None (then call that).

    The fast path of a write: flat metadata of plain JSON scalars, a type test per value. It accepts exactly
    what ``validate_metadata`` accepts without converting, so errors and normalisation stay with that one.
    The input checks of ``kb_base.input_checks`` that are not cheap here (lone surrogates: non-ASCII text) are left
    to the caller's JSON encoding, which refuses them (``stores.base.plain_metadata_json`` returns None).
    """
    for key, value in metadata.items():
        if type(key) is not str or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
            return None
        kind = "" if not schema or key.startswith(RESERVED_PREFIX) else schema.get(key)
        kind_of_value = type(value)
        if kind is None or kind_of_value not in PLAIN_TYPES[kind]:
            return None
        if kind_of_value is str:
            if len(value) > SHORT_VALUE_CHARS or "\x00" in value:
                return None
        elif kind_of_value is float:
            if value - value != 0.0 or (value == 0.0 and math.copysign(1.0, value) < 0):  # NaN, infinities, -0.0
                return None
        elif kind_of_value is int and not INT64_MIN <= value <= INT64_MAX:
            return None
    return dict(metadata)


def validate_metadata(
    schema: Mapping[str, str], metadata: Mapping[str, Any], doc_label: str
) -> dict[str, Any]:
    """Check and normalise one document's metadata; raise SchemaError (or InvalidInputError for a value no
    store can hold, see ``kb_base.input_checks``) naming the document and key."""
    for key in metadata:
        if not isinstance(key, str):
            raise SchemaError(f"{doc_label}: metadata key {key!r} is not a string")
    metadata = check_metadata(metadata, doc_label)
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith(RESERVED_PREFIX) or not schema:
            out[key] = _check_free_value(key, value, doc_label)
            continue
        kind = schema.get(key)
        if kind is None:
            raise SchemaError(
                f"{doc_label}: metadata key {key!r} is not in the knowledge bank's metadata schema "
                f"(declared keys: {', '.join(sorted(schema)) or 'none'}); add it to the schema or drop it"
            )
        if value is None:
            out[key] = None
            continue
        ok, normalised = coerce_value(kind, value)
        if not ok:
            raise SchemaError(
                f"{doc_label}: metadata key {key!r} must be of type {kind}, got {value!r} "
                f"({type(value).__name__})"[:500]
            )
        out[key] = normalised
    return out


def _check_free_value(key: str, value: Any, doc_label: str) -> Any:
    """Without a schema any JSON scalar is accepted; containers are kept as they are if JSON-safe."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(f"{doc_label}: metadata key {key!r} is {value!r}, which JSON cannot hold")
    if isinstance(value, dt.date):
        return _normalise_date(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if value is None or isinstance(value, str | bool | list | dict):
        return value
    raise SchemaError(f"{doc_label}: metadata key {key!r} has a value of type {type(value).__name__}")


def validate_filter(schema: Mapping[str, str], flt: Filter | None) -> Filter | None:
    """Check a parsed filter against the schema (a no-op when the KB declares none)."""
    if flt is None or not schema:
        return flt
    for comparison in comparisons(flt):
        kind = schema.get(comparison.key)
        if kind is None:
            if comparison.key.startswith(RESERVED_PREFIX):
                continue
            raise FilterError(
                f"filter on {comparison.key!r}, which is not in the metadata schema "
                f"(declared keys: {', '.join(sorted(schema)) or 'none'})"
            )
        values = comparison.value if isinstance(comparison.value, tuple) else (comparison.value,)
        for value in values:
            ok, _ = coerce_value(kind, value)
            if not ok or (kind == "date" and not isinstance(value, str)):
                raise FilterError(
                    f"filter on {comparison.key!r} ({kind}) compares it with {value!r} "
                    f"({type(value).__name__})"
                )
    return flt
