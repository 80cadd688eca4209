"""Plain text: UTF-8 (a BOM is dropped), else Latin-1 with a warning; binary data is refused."""

from __future__ import annotations

from kb_base.errors import ExtractionError


def decode_text(data: bytes, warnings: list[str]) -> str:
    if b"\x00" in data[:8192]:
        raise ExtractionError("the file holds binary data (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        warnings.append(f"not valid UTF-8 ({exc.reason} at byte {exc.start}); read as Latin-1")
        return data.decode("latin-1")
