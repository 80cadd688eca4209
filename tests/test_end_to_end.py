"""End to end with the real all-MiniLM-L6-v2 model, exactly as the reference API reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_community.vectorstores import FAISS
from langchain_core.documents import Document

import kb

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PARAGRAPHS = [json.loads(line) for line in (FIXTURES / "paragraphs.jsonl").read_text().splitlines()]

QUESTIONS = {
    "How do bees tell each other where the flowers are?": "honeybee",
    "Why does bread rise without yeast from a packet?": "sourdough",
    "What happens when a star much heavier than the sun collapses?": "blackhole",
    "How does raising interest rates slow down price increases?": "inflation",
    "When am I allowed to castle my king?": "chess",
    "Why do long distance runners suddenly run out of energy?": "marathon",
    "How do photovoltaic cells generate current?": "solar",
    "How does a protocol make sure lost network packets are sent again?": "tcp",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def papers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kb.EmbeddedClient]:
    home = tmp_path_factory.mktemp("e2e-home")
    client = kb.api_client(home=home)
    project = client.get_default_project()
    llm_ids = [llm.id for llm in project.list_llms(purpose="TEXT_EMBEDDING_EXTRACTION")]
    assert "local:all-MiniLM-L6-v2" in llm_ids
    images = project.create_managed_folder("images")
    images.upload_file("/page1.png", FIXTURES / "images" / "page1.png")
    handle = project.create_knowledge_bank("papers", embedding_llm_id="local:all-MiniLM-L6-v2",
                                           vector_store_type="FAISS")
    settings = handle.get_settings()
    settings.set_metadata_schema({"source": "string", "topic": "string", "start_index": "int"})
    settings.set_images_folder(f"{images.project_key}.{images.get_id()}")
    settings.save()
    core = project.get_knowledge_bank(handle.id).as_core_knowledge_bank()
    with core.get_writer() as writer:
        formatter = writer.get_metadata_formatter()
        docs = []
        for paragraph in PARAGRAPHS:
            doc = Document(page_content=paragraph["text"],
                           metadata={"source": paragraph["id"], "topic": paragraph["topic"], "start_index": 0})
            if paragraph["id"] == "solar":
                doc = formatter.with_retrieval_content(image_paths=["/page1.png"]).format_metadata(doc)
            docs.append(doc)
        writer.as_langchain_vectorstore().add_documents(docs, ids=[p["id"] for p in PARAGRAPHS])
    yield client
    client.close()


def _core(client: kb.EmbeddedClient) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    project = client.get_default_project()
    return project.list_knowledge_banks()[0].to_knowledge_bank().as_core_knowledge_bank()


def test_embedding_query_api(papers: kb.EmbeddedClient) -> None:
    emb = papers.get_default_project().get_llm("local:all-MiniLM-L6-v2")
    query = emb.new_embeddings()
    query.add_text("The quick brown fox")
    query.add_text("A fast auburn fox")
    vectors = query.execute().get_embeddings()
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True)) > 0.6


@pytest.mark.parametrize("question,expected", sorted(QUESTIONS.items()))
def test_retriever_ranks_the_answer_first(papers: kb.EmbeddedClient, question: str, expected: str) -> None:
    retriever = _core(papers).as_langchain_retriever(search_type="similarity", search_kwargs={"k": 4})
    docs = retriever.invoke(question)
    assert docs[0].id == expected, [d.id for d in docs]


def test_vectorstore_is_langchain_faiss_with_scores_and_filters(papers: kb.EmbeddedClient) -> None:
    store = _core(papers).as_langchain_vectorstore()
    assert isinstance(store, FAISS)
    ranked = store.similarity_search_with_score("glaciers and volcanoes shape landscapes", k=20,
                                                filter={"topic": "geology"})
    assert {d.id for d, _ in ranked} == {"volcano", "glacier"}
    assert ranked[0][1] >= ranked[1][1]
    mmr = store.max_marginal_relevance_search("medicine against infections", k=2, fetch_k=10)
    assert len({d.id for d in mmr}) == 2


def test_hybrid_and_keyword_find_exact_terms(papers: kb.EmbeddedClient) -> None:
    store = _core(papers).as_langchain_vectorstore()
    assert store.keyword_search("espresso crema", k=1)[0].id == "coffee"
    assert store.hybrid_search("Pharos of Alexandria", k=1)[0].id == "lighthouse"


def test_search_result_gives_its_images(papers: kb.EmbeddedClient) -> None:
    core = _core(papers)
    result = core.search(query="How do photovoltaic cells generate current?", k=1)[0]
    assert result.id == "solar"
    assert core.get_images(result) == [(FIXTURES / "images" / "page1.png").read_bytes()]


def test_kb_survives_a_new_client(papers: kb.EmbeddedClient) -> None:
    again = kb.api_client(home=papers.home)
    try:
        docs = _core(again).as_langchain_retriever(search_kwargs={"k": 1}).invoke("When am I allowed to castle?")
        assert docs[0].id == "chess"
    finally:
        again.close()
