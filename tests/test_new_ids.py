"""Ids kb makes for documents given without one (``kb_base.documents.new_ids``): the strings ``str(uuid.uuid4())``
makes, made a batch at a time, and what the LangChain writes hand back for documents without ids."""

from __future__ import annotations

import uuid

from kb.client import EmbeddedClient
from kb_base.documents import new_ids
from tests.conftest import FAKE_MODEL_ID


def test_new_ids_are_version_4_uuids_as_uuid4_writes_them() -> None:
    ids = new_ids(20_000)
    assert len(ids) == len(set(ids)) == 20_000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lowercase, dashed 8-4-4-4-12, as str(uuid.uuid4())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # the 122 random bits do vary: every hex digit turns up in random positions; the variant digit takes its four
    assert all({text[column] for text in ids[:2000]} == set("0123456789abcdef") for column in (0, 7, 15, 20, 35))
    assert {text[19] for text in ids[:2000]} == set("89ab") and {text[14] for text in ids} == {"4"}
    assert new_ids(0) == [] and new_ids(1) != new_ids(1)


def test_langchain_writes_fill_in_missing_ids_and_keep_given_ones(client: EmbeddedClient) -> None:
    core = client.get_default_project().create_knowledge_bank("ids", embedding_llm_id=FAKE_MODEL_ID) \
        .as_core_knowledge_bank()
    store = core.as_langchain_vectorstore()
    made = store.add_texts(["alpha", "beta", "gamma"])
    mixed = store.add_texts(["delta", "epsilon", "zeta"], ids=["given-1", None, ""])
    vectors = store.add_embeddings([("eta", [0.1] * 6), ("theta", [0.2] * 6)])
    assert mixed[0] == "given-1"
    for new in [*made, *mixed[1:], *vectors]:
        assert uuid.UUID(new).version == 4
    assert len(set(made + mixed + vectors)) == 8
    texts = {doc.id: doc.page_content for doc in store.get_by_ids(made + mixed + vectors)}
    assert texts == dict(zip(made + mixed + vectors, ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta",
                                                       "theta"], strict=True))
