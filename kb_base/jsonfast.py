"""JSON decoding on hot read paths: orjson when it can, the standard library when it cannot.

Metadata is written with ``json.dumps`` and read back on every search hit; orjson decodes it
several times faster. orjson refuses a few things the standard library accepts (NaN literals, lone
surrogates) and reads integers beyond 64 bits as floats, so text with either falls back to
``json.loads`` and decodes exactly as it was written.
"""

from __future__ import annotations

import json
import re
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    orjson = None  # type: ignore[assignment]


# 19 digits in a row that do not follow a digit or a decimal point may be an integer beyond 64 bits
# (orjson would make it a float); the fractions of floats (0.00012345678901234567) never match.
_LONG_DIGITS = re.compile(r"(?<![0-9.])[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"(?<![0-9.])[0-9]{19}")


_ANY_19_DIGITS = re.compile(r"[0-9]{19}")  # a cheaper scan first: most metadata has no such run at all


def orjson_reads_exactly(text: str) -> bool:
    """Whether orjson decodes this text as the standard library does (check once, decode many times)."""
    return orjson is not None and (not _ANY_19_DIGITS.search(text) or not _LONG_DIGITS.search(text))


def loads_checked(text: str, exact: bool) -> Any:
    """Decode text already classified by ``orjson_reads_exactly``."""
    if exact:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def loads_json(text: str | bytes) -> Any:
    long_digits = _LONG_DIGITS_BYTES if isinstance(text, bytes | bytearray) else _LONG_DIGITS
    if orjson is not None and not long_digits.search(text):  # type: ignore[call-overload]
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
