"""Input no store can hold (lone surrogates, NUL, huge integers, NaN, deep nesting, ...) is refused at the boundary
with a typed error naming the document and field, on every Python write path, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

import kb
from kb.client import EmbeddedClient
from kb_base.input_checks import MAX_DEPTH, MAX_KEY_CHARS, MAX_VALUE_BYTES
from tests.conftest import FAKE_MODEL_ID
from writers.ingest import IngestOptions, ingest

SURROGATE = "\ud800"


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


# (metadata value or whole metadata, a fragment the error message must contain)
HOSTILE_METADATA = {
    "surrogate in a value": ({"source": f"a{SURROGATE}b"}, "surrogate"),
    "surrogate in a key": ({f"k{SURROGATE}": "x"}, "surrogate"),
    "low surrogate alone": ({"source": "\udfff"}, "surrogate"),
    "NUL in a value": ({"source": "a\x00b"}, "NUL"),
    "NUL in a key": ({"a\x00b": 1}, "NUL"),
    "empty key": ({"": 1}, "empty"),
    "very long key": ({"k" * (MAX_KEY_CHARS + 1): 1}, str(MAX_KEY_CHARS)),
    "very long value": ({"source": "é" * MAX_VALUE_BYTES}, str(MAX_VALUE_BYTES)),
    "integer beyond 64 bits": ({"n": 2**64}, "64 bits"),
    "unsigned 64-bit integer": ({"n": 2**63}, "64 bits"),
    "negative integer beyond 64 bits": ({"n": -(2**63) - 1}, "64 bits"),
    "NaN": ({"x": float("nan")}, "nan"),
    "infinity": ({"x": float("inf")}, "inf"),
    "NaN inside a list": ({"x": [1.0, float("nan")]}, "nan"),
    "surrogate inside a nested object": ({"x": {"y": [SURROGATE]}}, "surrogate"),
    "deeply nested": ({"x": _deep(MAX_DEPTH + 5)}, "deeper"),
}


@pytest.fixture
def core(client: EmbeddedClient) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    handle = client.get_default_project().create_knowledge_bank("hardened", embedding_llm_id=FAKE_MODEL_ID)
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        writer.add_documents([Document(page_content="kept", metadata={"source": "ok"})], ids=["kept"])
    return core


def _stored(core: Any) -> list[tuple[str, str, dict]]:
    return sorted((d.id, d.page_content, d.metadata) for d in core.get_documents(["kept", "bad", "good"]))


@pytest.mark.parametrize("metadata,fragment", HOSTILE_METADATA.values(), ids=list(HOSTILE_METADATA))
def test_hostile_metadata_is_refused_by_the_writer_naming_document_and_key(core: Any, metadata: dict,
                                                                           fragment: str) -> None:
    before = _stored(core)
    with pytest.raises(kb.InvalidInputError) as caught, core.get_writer() as writer:
        writer.add_documents([Document(page_content="fine", metadata={"source": "ok"}),
                              Document(page_content="text", metadata=metadata)], ids=["good", "bad"])
    message = str(caught.value)
    assert "'bad'" in message and "position 1" in message and fragment.lower() in message.lower(), message
    key = next(iter(metadata))
    assert repr(key)[:20] in message or "empty" in message, message
    assert _stored(core) == before  # the good document of the same write was not committed either


@pytest.mark.parametrize("text", [f"a{SURROGATE}", "a\x00b"], ids=["surrogate", "NUL"])
def test_hostile_text_is_refused_naming_page_content(core: Any, text: str) -> None:
    before = _stored(core)
    with pytest.raises(kb.InvalidInputError, match=r"'bad' \(position 0\): page_content"):
        core.as_langchain_vectorstore().add_texts([text], ids=["bad"])
    assert _stored(core) == before


@pytest.mark.parametrize("doc_id", [f"x{SURROGATE}", "x\x00y", "", "i" * 513],
                         ids=["surrogate", "NUL", "empty", "long"])
def test_hostile_ids_are_refused(core: Any, doc_id: str) -> None:
    before = _stored(core)
    with pytest.raises(kb.InvalidInputError, match=r"position 1\): id"):
        core.write_texts(["a", "b"], [{}, {}], ["good", doc_id])  # (LangChain's add_texts makes ids for "")
    with pytest.raises(kb.InvalidInputError, match=r"ids\[0\]"):
        core.as_langchain_vectorstore().delete([doc_id])
    assert _stored(core) == before


def test_duplicate_ids_in_one_write_are_refused_naming_both_positions(core: Any) -> None:
    before = _stored(core)
    with pytest.raises(kb.InvalidInputError, match=r"'good' \(position 2\).*position 0"):
        core.as_langchain_vectorstore().add_texts(["a", "b", "c"], ids=["good", "other", "good"])
    assert _stored(core) == before


def test_negative_zero_is_stored_as_zero_and_found_by_filters(core: Any) -> None:
    core.as_langchain_vectorstore().add_texts(["zero"], metadatas=[{"x": -0.0, "y": [-0.0]}], ids=["good"])
    [doc] = core.get_documents(["good"])
    assert doc.metadata == {"x": 0.0, "y": [0.0]}
    assert str(doc.metadata["x"]) == "0.0"
    assert core.count({"x": 0.0}) == 1 and core.count({"x": {"$lt": 0}}) == 0


def test_hostile_searches_are_refused_with_typed_errors(core: Any) -> None:
    with pytest.raises(kb.InvalidInputError, match="query holds a lone UTF-16 surrogate"):
        core.search(query=f"fox{SURROGATE}", k=2)
    with pytest.raises(kb.InvalidInputError, match="query holds a NUL"):
        core.search(query="fox\x00", k=2, search_type="keyword")
    with pytest.raises(kb.FilterError, match=r"filter.source: the value holds a lone UTF-16 surrogate"):
        core.search(query="fox", k=2, filter={"source": SURROGATE})
    with pytest.raises(kb.FilterError, match="64 bits"):
        core.count({"n": {"$in": [1, 2**70]}})
    assert [r.id for r in core.search(query="kept", k=2)] == ["kept"]  # and the KB still answers


def test_hostile_settings_are_refused_and_the_old_settings_kept(client: EmbeddedClient, core: Any) -> None:
    handle = client.get_default_project().get_knowledge_bank(core.id)
    for bad in ({"note": SURROGATE}, {"note": float("nan")}, {"note": 2**80}, {"note": _deep(MAX_DEPTH + 2)}):
        settings = handle.get_settings()
        settings.get_raw().setdefault("search", {}).update(bad)
        with pytest.raises(kb.InvalidInputError, match="settings"):
            settings.save()
        assert "note" not in (handle.get_settings().get_raw().get("search") or {})
    with pytest.raises(kb.InvalidInputError):
        client.get_default_project().create_knowledge_bank(f"n{SURROGATE}", embedding_llm_id=FAKE_MODEL_ID)


def test_folder_paths_with_surrogates_or_nul_are_refused(client: EmbeddedClient) -> None:
    folder = client.get_default_project().create_managed_folder("files")
    for path in (f"/a{SURROGATE}.txt", "/a\x00.txt"):
        with pytest.raises(kb.PathError):
            folder.upload_data(path, b"x")
    assert folder.list_paths() == []


def test_ingestion_rejects_hostile_rows_by_number_and_writes_the_rest(core: Any, tmp_path: Path) -> None:
    rows = [
        '{"id": "r1", "text": "fine row", "source": "s"}',
        '{"id": "r2", "text": "bad \\ud800 text"}',
        '{"id": "r3\\ud800", "text": "bad id"}',
        '{"id": "r4", "text": "bad metadata", "source": "\\udfff"}',
        '{"id": "r5", "text": "huge int", "n": 123456789012345678901234567890}',
        '{"id": "r6", "text": "Infinity", "x": Infinity}',
        '{"id": "r7", "text": "nul \\u0000 in text"}',
        '{"id": "r8", "text": "deep", "x": ' + json.dumps(_deep(MAX_DEPTH + 3)) + "}",
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = ingest(core, path, IngestOptions(chunk_size=0, id_column="id"), progress=False)
    rejected = {r["row"]: r["reason"] for r in report.rejected}
    assert sorted(rejected) == [2, 3, 4, 5, 6, 7, 8], rejected
    assert "surrogate" in rejected[2] and "text column" in rejected[2]
    assert "surrogate" in rejected[3] and "id column" in rejected[3]
    assert "'source'" in rejected[4] and "64 bits" in rejected[5] and "NUL" in rejected[7]
    assert "deeper" in rejected[8]
    assert report.rows_written == 1 and core.count() == 2  # "kept" and row 1


@pytest.mark.parametrize("suffix,data", [
    (".jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "bad \xff\xfe bytes"}\n'),
    (".jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "cesu \xed\xa0\x80 surrogate"}\n'),
    (".csv", b"id,text\na,ok\nb,bad \xff bytes\n"),
], ids=["jsonl-invalid-utf8", "jsonl-encoded-surrogate", "csv-invalid-utf8"])
def test_invalid_utf8_files_are_rejected_by_row_or_refused_whole(core: Any, tmp_path: Path, suffix: str,
                                                                 data: bytes) -> None:
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(data)
    before = core.count()
    try:
        report = ingest(core, path, IngestOptions(chunk_size=0, id_column="id"), progress=False)
    except kb.InvalidInputError as exc:  # a whole file refused: nothing of it written
        assert "UTF-8" in str(exc) or "utf-8" in str(exc), exc
        assert core.count() == before
        return
    assert [r["row"] for r in report.rejected] == [2], report.rejected
    assert core.count() == before + 1
    for doc in core.get_documents(["a#0", "b#0"]):
        assert doc.page_content.encode("utf-8")  # whatever was stored is valid Unicode
