"""A write's batch checks (``writers.batch_checks``) against the per-document path they stand in for.

The batch path may send a document to the per-document path when it need not (over-flag), never accept one that
path would refuse or change: whatever it accepts must be what ``plain_metadata`` returns unchanged, encoded as
``plain_metadata_json`` encodes it. And the documents of an ordinary bulk load must actually take it.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kb
from kb_base.input_checks import INT64_MAX, MAX_ID_CHARS, _plain_ids, check_write_ids
from stores.record_checks import plain_metadata_json
from writers.batch_checks import plain_metadata_batch, suspect_texts
from writers.schema import SHORT_VALUE_CHARS, plain_metadata

from .conftest import FAKE_MODEL_ID

KEYS = st.sampled_from(["a", "b", "year", "KB_x", "", "k\x00", "é", "\ud800", "x" * 300])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.5]),
    st.text(max_size=12), st.sampled_from(["a\x00b", "\ud800", "x" * (SHORT_VALUE_CHARS + 1), "\\u0000", "é"]),
)
VALUES = st.one_of(SCALARS, st.lists(st.integers(), max_size=2), st.dates())
SCHEMAS = st.sampled_from([{}, {"a": "string", "b": "float", "year": "int"}, {"a": "bool", "b": "date"},
                           {"a": "string", "b": "int", "year": "float", "é": "string"}])


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS, metadatas=st.lists(st.dictionaries(KEYS, VALUES, max_size=4), min_size=1, max_size=6))
def test_whatever_the_batch_path_accepts_the_per_document_path_accepts_unchanged(schema: dict,
                                                                                 metadatas: list) -> None:
    out = plain_metadata_batch(schema, metadatas)
    if out is None:
        return
    assert len(out) == len(metadatas)
    for metadata, text in zip(metadatas, out, strict=True):
        expected = plain_metadata(schema, metadata)
        assert expected is not None and plain_metadata_json(expected) == text
        decoded = orjson.loads(text)  # what the batch's records hold
        assert decoded == expected and list(decoded) == list(expected)
        assert all(type(decoded[key]) is type(value) for key, value in expected.items())


PLAIN_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                         st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: math.copysign(1, f) > 0),
                         st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                 max_size=20))


@settings(max_examples=200, deadline=None)
@given(metadatas=st.lists(st.dictionaries(st.sampled_from(["source", "page", "score", "title", "KB_x"]),
                                          PLAIN_VALUES, max_size=5), min_size=1, max_size=8))
def test_plain_metadata_without_a_schema_always_takes_the_batch_path(metadatas: list) -> None:
    out = plain_metadata_batch({}, metadatas)
    assert out is not None
    assert [orjson.loads(text) for text in out] == metadatas


def test_each_kind_of_doubt_sends_the_batch_one_by_one() -> None:
    good = {"a": "x", "b": 1.5, "year": 2020}
    schema = {"a": "string", "b": "float", "year": "int"}
    assert plain_metadata_batch(schema, [good, good]) is not None
    for bad in ({"a": 1}, {"b": float("nan")}, {"b": -0.0}, {"b": 2}, {"year": 2**63}, {"year": True},
                {"z": "not in the schema"}, {"a": "x\x00"}, {"a": "x" * (SHORT_VALUE_CHARS + 1)}, {"a": "\ud800"},
                {1: "key not a string"}, {"": "empty key"}):
        assert plain_metadata_batch(schema, [good, bad]) is None, bad
    assert plain_metadata_batch({}, [good, None]) is None  # type: ignore[list-item]
    assert plain_metadata_batch({}, [{"when": __import__("datetime").date(2020, 1, 1)}]) is None
    assert plain_metadata_batch({}, [{"n": 2**63 - 1, "m": -(2**63)}]) is not None


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(["a\x00", "\ud800x", "é", "plain"]),
                                st.integers()), max_size=8))
def test_every_text_the_fast_path_would_refuse_is_a_suspect(texts: list) -> None:
    suspects = suspect_texts(texts)
    for position, text in enumerate(texts):
        if type(text) is not str or "\x00" in text or not text.isascii():
            assert position in suspects
        else:
            assert position not in suspects


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["", "a\x00", "\ud800", "x" * 513, "é"]),
                              st.integers()), max_size=6))
def test_ids_checked_in_c_agree_with_the_id_by_id_check(ids: list) -> None:
    if _plain_ids(ids):
        assert all(type(i) is str and 0 < len(i) <= MAX_ID_CHARS and "\x00" not in i and i.isascii() for i in ids)
    try:
        check_write_ids(ids)
    except kb.InvalidInputError:
        assert not all(type(i) is str and i and len(i) <= MAX_ID_CHARS and "\x00" not in i for i in ids) or \
            any(not i.isascii() for i in ids) or len(set(ids)) < len(ids)


@pytest.fixture
def core(client: kb.client.EmbeddedClient) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    handle = client.get_default_project().create_knowledge_bank("batch", embedding_llm_id=FAKE_MODEL_ID)
    return handle.as_core_knowledge_bank()


def _batch(n: int) -> tuple[list[str], list[dict], list[str], np.ndarray]:
    texts = [f"text number {i}" for i in range(n)]
    metadatas = [{"i": i, "even": i % 2 == 0, "score": i / 7} for i in range(n)]
    vectors = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    return texts, metadatas, [f"d{i}" for i in range(n)], vectors


@pytest.mark.parametrize("position", [0, 7, 299])
def test_a_bad_text_in_a_plain_batch_is_named_and_nothing_is_written(core: object, position: int) -> None:
    texts, metadatas, ids, vectors = _batch(300)
    texts[position] = "bad \ud800 text"
    texts[position + 5 if position < 295 else position - 5] = "accented é text, fine"
    with pytest.raises(kb.InvalidInputError, match=rf"document 'd{position}' \(position {position}\).*surrogate"):
        core.write_texts(texts, metadatas, ids, vectors=vectors)  # type: ignore[attr-defined]
    assert core.count() == 0  # type: ignore[attr-defined]


def test_the_first_bad_document_is_named_whether_its_text_or_its_metadata_is_bad(core: object) -> None:
    texts, metadatas, ids, vectors = _batch(50)
    metadatas[30]["score"] = float("inf")
    texts[40] = "NUL \x00 here"
    with pytest.raises(kb.InvalidInputError, match=r"document 'd30' \(position 30\)"):
        core.write_texts(texts, metadatas, ids, vectors=vectors)  # type: ignore[attr-defined]
    metadatas[30]["score"] = 1.0
    with pytest.raises(kb.InvalidInputError, match=r"document 'd40' \(position 40\).*NUL"):
        core.write_texts(texts, metadatas, ids, vectors=vectors)  # type: ignore[attr-defined]
    assert core.count() == 0  # type: ignore[attr-defined]


def test_a_batch_with_suspects_is_stored_exactly_as_one_by_one(core: object) -> None:
    texts, metadatas, ids, vectors = _batch(40)
    texts[3] = "café crème"  # non-ASCII: a suspect, and fine
    metadatas[5] = {"when": "2020-01-02", "n": INT64_MAX}
    metadatas[6] = {"zero": -0.0}  # normalised to 0.0 by the per-document path
    core.write_texts(texts, metadatas, ids, vectors=vectors)  # type: ignore[attr-defined]
    stored = {d.id: d for d in core.get_documents(ids)}  # type: ignore[attr-defined]
    assert stored["d3"].page_content == "café crème"
    assert stored["d5"].metadata == {"when": "2020-01-02", "n": INT64_MAX}
    assert stored["d6"].metadata == {"zero": 0.0} and math.copysign(1, stored["d6"].metadata["zero"]) > 0
    assert stored["d9"].metadata == metadatas[9]


def test_metadata_changed_after_the_write_does_not_reach_the_store(core: object) -> None:
    texts, metadatas, ids, vectors = _batch(20)
    records = core.prepare_records(texts, metadatas, ids, vectors)  # type: ignore[attr-defined]
    metadatas[2]["i"] = "changed"
    with core.driver.begin() as tx:  # type: ignore[attr-defined]
        tx.upsert(records)
    [stored] = core.get_documents(["d2"])  # type: ignore[attr-defined]
    assert stored.metadata["i"] == 2


def test_a_vector_set_on_a_prepared_record_is_the_one_stored(core: object) -> None:
    texts, metadatas, ids, vectors = _batch(20)
    records = core.prepare_records(texts, metadatas, ids, vectors)  # type: ignore[attr-defined]
    target = np.zeros(6, dtype=np.float32)
    target[0] = 1.0
    records[4].vector = target  # as an ingestion does once it has embedded a changed chunk
    with core.driver.begin() as tx:  # type: ignore[attr-defined]
        tx.upsert(records)
    [hit] = core.search(vector=target.tolist(), k=1)  # type: ignore[attr-defined]
    assert hit.id == "d4" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_a_store_that_takes_records_gets_the_metadata_of_a_batch_kept_as_json(client: object) -> None:
    """A bulk batch keeps plain metadata as JSON only; a store that is handed Records (Chroma here) gets it
    decoded, every type as it was given."""
    core = client.get_default_project().create_knowledge_bank(  # type: ignore[attr-defined]
        "batch-chroma", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="CHROMA").as_core_knowledge_bank()
    texts, metadatas, ids, vectors = _batch(30)
    metadatas[3]["title"] = "naïve café"
    records = core.prepare_records(texts, metadatas, ids, vectors)
    assert records.columns() is not None and records.metadatas is None  # the JSON is all it holds
    core.write_texts(texts, metadatas, ids, vectors=vectors)
    stored = {d.id: d.metadata for d in core.get_documents(ids)}
    assert stored == dict(zip(ids, metadatas, strict=True))
    assert type(stored["d3"]["score"]) is float and type(stored["d3"]["even"]) is bool


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 5000), scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e18]), zero_row=st.booleans(),
       bad=st.sampled_from([None, np.nan, np.inf, -np.inf]))
def test_vectors_are_checked_and_normalised_a_few_rows_at_a_time_exactly_as_whole(rows: int, scale: float,
                                                                                  zero_row: bool, bad) -> None:
    """The batch's norms and finiteness test run in steps of rows (small temporaries); the stored vectors
    are np.linalg.norm's to the bit, and a non-finite value anywhere, even in the last step, sends the batch to
    the record-by-record check that names it."""
    from stores.base import Record
    from stores.record_checks import checked_vectors, normalise

    vectors = (np.random.default_rng(rows).standard_normal((rows, 24)) * scale).astype(np.float32)
    if zero_row and rows:
        vectors[rows // 2] = 0.0
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    assert np.array_equal(normalise(vectors), vectors / norms)
    if rows and bad is not None:
        vectors[-1, -1] = bad
    records = [Record(f"d{i}", "t", {}, v) for i, v in enumerate(vectors)]
    if rows and bad is not None:
        with pytest.raises(kb.InvalidInputError, match=f"'d{rows - 1}'"):
            checked_vectors(records, None)
    elif rows:
        assert np.array_equal(checked_vectors(records, None), vectors)
