"""JSON decoding on hot read paths: orjson when it can, the standard library when it cannot.

Metadata is written with ``json.dumps`` and read back on every search hit; orjson decodes it
several times faster. orjson refuses a few things the standard library accepts (integers beyond
64 bits), so those fall back to ``json.loads`` and decode exactly as they were written.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    orjson = None  # type: ignore[assignment]


def loads_json(text: str | bytes) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
