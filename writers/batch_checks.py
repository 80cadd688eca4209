"""A write's texts and metadata checked a batch at a time, with C loops instead of a Python loop per document.

``CoreKnowledgeBank.prepare_records`` used to check every document on its own (``writers.schema.plain_metadata``,
``kb_base.input_checks.string_problem``, orjson): 5-10 us a document, most of a 100k bulk load's Python time. Here the
checks run over whole columns through builtins that loop in C (``map``, ``set``, ``max``, ``str.__contains__``,
orjson), with two outcomes:

- *plain*: every document's metadata is exactly what the per-document fast path accepts unchanged (a ``dict``
  of plain JSON scalars of the types the schema allows, finite floats other than ``-0.0``, 64-bit ints, keys
  and strings within their limits): the batch keeps its JSON texts only (decoded, they are the copies the
  per-document path makes). Texts are cleared here too (a ``str`` without NUL within ``MAX_TEXT_CHARS``);
  the few that are not (non-ASCII ones may hide a lone surrogate) are checked one by one;
- otherwise the whole batch goes through the per-document path, which accepts, normalises or names the first
  bad document as it always has.

The checks may send a batch or a text to the per-document path when it need not go (a string value holding
the six characters ``\\u0000`` looks like an escaped NUL), never let through what that path would refuse or
change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson

from kb_base.input_checks import INT64_MAX, INT64_MIN, MAX_KEY_CHARS, MAX_TEXT_CHARS
from writers.schema import PLAIN_TYPES, RESERVED_PREFIX, SHORT_VALUE_CHARS

_PER_KEY_AT_MOST = 64  # distinct keys checked key by key; beyond, by value (no schema) or one by one (a schema)


def suspect_texts(texts: Sequence[Any]) -> set[int]:
    """Positions of the texts the per-document path must look at: not a ``str``, too long, a NUL, or not ASCII
    (which may hide a lone surrogate; most are fine, and the per-document check of one is cheap)."""
    if set(map(type, texts)) == {str} and max(map(len, texts), default=0) <= MAX_TEXT_CHARS and \
            not any(map(str.__contains__, texts, repeat("\x00"))):
        if all(map(str.isascii, texts)):
            return set()
        return {i for i, text in enumerate(texts) if not text.isascii()}
    return {i for i, text in enumerate(texts) if type(text) is not str or len(text) > MAX_TEXT_CHARS or
            "\x00" in text or not text.isascii()}


def plain_metadata_batch(schema: Mapping[str, str], metadatas: Sequence[Any]) -> list[str] | None:
    """The metadata's JSON texts, if every one of them is plain (see the module docstring), else None: then the
    caller checks them one by one. Each JSON text is what ``plain_metadata_json`` gives; decoded, it is the copy
    of the metadata that ``plain_metadata`` returns."""
    if not metadatas:
        return []
    if set(map(type, metadatas)) != {dict}:
        return None
    keys = set().union(*metadatas)
    kinds: dict[str, str] = {}
    for key in keys:
        if type(key) is not str or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
            return None  # the per-document path names the key
        kind = "" if not schema or key.startswith(RESERVED_PREFIX) else schema.get(key)
        if kind is None:
            return None
        kinds[key] = kind
    if not _values_plain(metadatas, kinds):
        return None
    try:
        encoded = list(map(bytes.decode, map(orjson.dumps, metadatas)))
    except TypeError:  # orjson.JSONEncodeError is one: an integer beyond 64 bits, a lone surrogate
        return None
    # A NUL in a string value is escaped as \u0000, and a string value is shorter than its document's JSON
    # text: both are cleared by looking at the JSON text (a text that trips either goes one by one).
    if max(map(len, encoded)) > SHORT_VALUE_CHARS or any(map(str.__contains__, encoded, repeat("\\u0000"))):
        return None
    return encoded


def _values_plain(metadatas: Sequence[dict[str, Any]], kinds: dict[str, str]) -> bool:
    """Every value's type allowed for its key's kind; floats finite and not -0.0; ints within 64 bits. Checked
    key by key (a column of a few C passes each); a batch with many distinct keys, all free of a schema, is
    checked value by value instead."""
    if len(kinds) > _PER_KEY_AT_MOST:
        if any(kinds.values()):
            return False
        return _numbers_plain(list(chain.from_iterable(map(dict.values, metadatas))), PLAIN_TYPES[""])
    # a document without the key gives None, which every kind allows
    return all(_numbers_plain(list(map(dict.get, metadatas, repeat(key))), PLAIN_TYPES[kind])
               for key, kind in kinds.items())


def _numbers_plain(values: list[Any], allowed: tuple[type, ...]) -> bool:
    types = set(map(type, values))
    if not types <= set(allowed):
        return False
    if int in types:
        ints = values if types == {int} else [value for value in values if type(value) is int]
        if min(ints) < INT64_MIN or max(ints) > INT64_MAX:
            return False
    if float in types:
        floats = np.array(values if types == {float} else [value for value in values if type(value) is float],
                          dtype=np.float64)
        # NaN and the infinities are not finite; -0.0 (which the per-document path makes 0.0) has its sign bit
        if not np.isfinite(floats).all() or (np.signbit(floats) & (floats == 0.0)).any():
            return False
    return True
