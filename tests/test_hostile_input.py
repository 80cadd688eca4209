"""Hostile input: random filters and random files never crash kb; they are answered or refused clearly."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kb
from kb_base.filters import MAX_DEPTH, matches, parse_filter
from stores.sqlite.filters import filter_to_sql
from tests.conftest import FAKE_MODEL_ID
from writers.ingest import IngestOptions, ingest

# Strings as JSON allows them (lone surrogates and NUL included, which hypothesis' default text leaves out),
# plus the edges stores care about; integers beyond 64 bits and every float.
HOSTILE_TEXT = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=8),  # surrogates (category Cs) included
    st.sampled_from(["\ud800", "a\udfff", "\x00", "x\x00", "k" * 300, "\ufeff", "é" * 9000]),
)
HOSTILE_NUMBERS = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
                            st.integers(min_value=-(2**70), max_value=-(2**63) + 1),
                            st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0))
JSON = st.recursive(
    st.none() | st.booleans() | HOSTILE_NUMBERS | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(HOSTILE_TEXT, st.sampled_from(["$and", "$or", "$not", "$eq", "$in", "$gt", "$ne", "$nin"])),
        inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(raw=JSON)
def test_any_json_is_a_filter_or_a_filter_error(raw: object) -> None:
    try:
        flt = parse_filter(raw)  # type: ignore[arg-type]
    except kb.FilterError:
        return
    matches(flt, {"a": 1, "b": "x", "c": True})  # whatever parses can be evaluated and translated
    filter_to_sql(flt)


@pytest.fixture(scope="module")
def metadata_core(tmp_path_factory: pytest.TempPathFactory) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    client = kb.api_client(home=tmp_path_factory.mktemp("hostile-metadata-home"))
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    return client.get_default_project().create_knowledge_bank(
        "hostile-metadata", embedding_llm_id=FAKE_MODEL_ID).as_core_knowledge_bank()


def _without_negative_zero(value: object) -> object:
    if isinstance(value, float) and value == 0.0:
        return 0.0
    if isinstance(value, dict):
        return {k: _without_negative_zero(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_negative_zero(v) for v in value]
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(metadata=st.dictionaries(HOSTILE_TEXT, JSON, max_size=4), text=HOSTILE_TEXT, doc_id=HOSTILE_TEXT)
def test_any_metadata_text_and_id_is_stored_faithfully_or_refused_whole(metadata_core: object, metadata: dict,
                                                                        text: str, doc_id: str) -> None:
    core: kb.core.CoreKnowledgeBank = metadata_core  # type: ignore[name-defined]
    before = core.count()
    try:
        with core.get_writer() as writer:
            writer.delete(["neighbour"])
            core.write_texts(["neighbour", text], [{"n": 1}, metadata], ["neighbour", doc_id or "empty"],
                             tx=writer.transaction)
    except kb.InvalidInputError:  # SchemaError and FilterError included: a typed error, nothing written
        assert core.count() == before
        return
    [stored] = core.get_documents([doc_id or "empty"])
    assert stored.page_content == text
    assert json.dumps(stored.metadata, sort_keys=True) == json.dumps(_without_negative_zero(metadata), sort_keys=True)
    with core.get_writer() as writer:
        writer.delete([doc_id or "empty"])


def test_deeply_nested_filters_are_refused() -> None:
    flt: dict = {"a": 1}
    for _ in range(MAX_DEPTH + 5):
        flt = {"$not": flt}
    with pytest.raises(kb.FilterError, match="deeper"):
        parse_filter(flt)


@pytest.fixture(scope="module")
def ingest_core(tmp_path_factory: pytest.TempPathFactory) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    client = kb.api_client(home=tmp_path_factory.mktemp("hostile-home"))
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    return client.get_default_project().create_knowledge_bank(
        "hostile", embedding_llm_id=FAKE_MODEL_ID, settings={"metadata_schema": {"n": "int"}}).as_core_knowledge_bank()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".parquet", ".arrow"]))
def test_random_bytes_in_any_format_never_crash_ingestion(ingest_core: object, tmp_path_factory: pytest.TempPathFactory,
                                                          data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("junk") / f"junk{suffix}"
    path.write_bytes(data)
    before = ingest_core.count()  # type: ignore[attr-defined]
    try:
        report = ingest(ingest_core, path, IngestOptions(chunk_size=0), progress=False)
    except (kb.InvalidInputError, kb.SchemaError):
        assert ingest_core.count() == before  # type: ignore[attr-defined]
        return
    assert report.rows_read == report.rows_written + report.rows_skipped + report.rows_rejected + \
        getattr(report, "rows_duplicate", 0)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.dictionaries(st.sampled_from(["text", "n", "id", "x"]),
                                     st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans(),
                                               st.floats(allow_nan=False)), max_size=4), max_size=12))
def test_random_jsonl_rows_are_written_or_rejected_by_number(ingest_core: object,
                                                             tmp_path_factory: pytest.TempPathFactory,
                                                             rows: list[dict]) -> None:
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = ingest(ingest_core, path, IngestOptions(chunk_size=0, metadata_columns=["n"]), progress=False)
    assert report.rows_read == len(rows)
    rejected_rows = {r["row"] for r in report.rejected}
    for number, row in enumerate(rows, start=1):
        text_ok = isinstance(row.get("text"), str) and row["text"].strip() != ""
        n_ok = row.get("n") is None or (isinstance(row.get("n"), int) and not isinstance(row.get("n"), bool))
        if not (text_ok and n_ok):
            assert number in rejected_rows, (number, row, report.rejected)
