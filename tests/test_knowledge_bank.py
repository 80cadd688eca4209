"""The embedded Python API: projects, knowledge banks, settings, the writer and its guarantees."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from langchain_community.vectorstores import FAISS
from langchain_core.documents import Document

import kb
from kb.client import EmbeddedClient
from kb.knowledge_bank import KnowledgeBankHandle
from tests.conftest import FAKE_MODEL_ID

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _kb(client: EmbeddedClient, name: str = "papers", **kwargs: object) -> KnowledgeBankHandle:
    project = client.get_default_project()
    return project.create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID, **kwargs)


def test_projects_and_catalog_persist_across_clients(client: EmbeddedClient, kb_home: Path) -> None:
    project = client.create_project("RESEARCH")
    handle = project.create_knowledge_bank("notes", embedding_llm_id=FAKE_MODEL_ID)
    assert {p["key"] for p in client.list_projects()} == {"DEFAULT", "RESEARCH"}
    other = kb.api_client(home=kb_home)
    try:
        items = other.get_project("RESEARCH").list_knowledge_banks()
        assert [(i.id, i.name) for i in items] == [(handle.id, "notes")]
        assert items[0].vector_store_type == "FAISS"
    finally:
        other.close()
    with pytest.raises(kb.AlreadyExistsError, match="RESEARCH"):
        client.create_project("RESEARCH")
    with pytest.raises(kb.NotFoundError, match="NOPE"):
        client.get_project("NOPE")
    with pytest.raises(kb.InvalidInputError, match="project key"):
        client.create_project("../evil")


def test_list_llms_has_the_local_default(client: EmbeddedClient) -> None:
    project = client.get_default_project()
    ids = [llm.id for llm in project.list_llms(purpose="TEXT_EMBEDDING_EXTRACTION")]
    assert "local:all-MiniLM-L6-v2" in ids
    assert FAKE_MODEL_ID in ids
    assert project.list_llms(purpose="GENERIC_COMPLETION") == []


def test_create_list_get_delete_knowledge_bank(client: EmbeddedClient) -> None:
    project = client.get_default_project()
    handle = _kb(client)
    assert [(i.id, i.name) for i in project.list_knowledge_banks()] == [(handle.id, "papers")]
    again = project.get_knowledge_bank(handle.id)
    assert again.name == "papers"
    core = again.as_core_knowledge_bank()
    core.as_langchain_vectorstore().add_texts(["hello"], ids=["a"])
    folder = core.folder
    assert folder.exists()
    with pytest.raises(kb.AlreadyExistsError, match="papers"):
        _kb(client)
    again.delete()
    assert project.list_knowledge_banks() == []
    assert not folder.exists()
    with pytest.raises(kb.NotFoundError, match=handle.id):
        project.get_knowledge_bank(handle.id)


def test_bad_creation_input_writes_nothing(client: EmbeddedClient) -> None:
    project = client.get_default_project()
    with pytest.raises(kb.UnknownStoreTypeError, match="PINECONE"):
        project.create_knowledge_bank("x", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="PINECONE")
    with pytest.raises(kb.UnknownModelError, match="openai:nope:model"):
        project.create_knowledge_bank("x", embedding_llm_id="openai:nope:model")
    with pytest.raises(kb.InvalidInputError, match="index type"):
        project.create_knowledge_bank("x", embedding_llm_id=FAKE_MODEL_ID,
                                      settings={"store": {"index": {"type": "LSH"}}})
    with pytest.raises(kb.SchemaError, match="decimal"):
        project.create_knowledge_bank("x", embedding_llm_id=FAKE_MODEL_ID,
                                      settings={"metadata_schema": {"price": "decimal"}})
    assert project.list_knowledge_banks() == []
    assert not (client.project_folder("DEFAULT") / "knowledge-banks").exists() or not any(
        (client.project_folder("DEFAULT") / "knowledge-banks").iterdir()
    )


def test_settings_schema_and_images_folder(client: EmbeddedClient) -> None:
    project = client.get_default_project()
    folder = project.create_managed_folder("images")
    handle = _kb(client)
    settings = handle.get_settings()
    settings.set_metadata_schema({"source": "string", "start_index": "int"})
    settings.set_images_folder(f"{folder.project_key}.{folder.get_id()}")
    assert handle.get_settings().get_metadata_schema() == {}  # nothing changes before save()
    settings.save()
    fresh = handle.get_settings()
    assert fresh.get_metadata_schema() == {"source": "string", "start_index": "int"}
    assert fresh.get_images_folder() == f"DEFAULT.{folder.id}"
    with pytest.raises(kb.NotFoundError, match="nope"):
        fresh.set_images_folder("DEFAULT.nope")
    with pytest.raises(kb.SchemaError, match="KB_x"):
        fresh.set_metadata_schema({"KB_x": "string"})


def test_writer_commits_atomically_and_reads_its_own_writes(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    with core.get_writer() as writer:
        assert Path(writer.folder_path).is_dir()
        store = writer.as_langchain_vectorstore()
        assert isinstance(store, FAISS)
        store.add_documents([Document(page_content=f"doc {i}", metadata={"i": i}) for i in range(5)])
        assert len(store.similarity_search("doc 1", k=10)) == 5  # the writer sees its own writes
        assert core.count() == 0  # readers do not, until the commit
        staging = Path(writer.folder_path)
    assert core.count() == 5
    assert not staging.exists()


def test_writer_exception_commits_nothing(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    core.as_langchain_vectorstore().add_texts(["kept"], ids=["keep"])
    with pytest.raises(RuntimeError, match="boom"):
        with core.get_writer() as writer:
            writer.clear()
            writer.as_langchain_vectorstore().add_texts(["lost"], ids=["lost"])
            raise RuntimeError("boom")
    assert core.count() == 1
    assert [d.id for d in core.get_documents(["keep", "lost"])] == ["keep"]


def test_writer_clear_replaces_everything(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    core.as_langchain_vectorstore().add_texts(["old 1", "old 2"], ids=["o1", "o2"])
    with core.get_writer() as writer:
        writer.clear()
        writer.as_langchain_vectorstore().add_texts(["new"], ids=["n"])
    assert [d.id for d in core.as_langchain_vectorstore().similarity_search("x", k=5)] == ["n"]


def test_writer_is_unusable_outside_its_block(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    writer = core.get_writer()
    with pytest.raises(kb.KBError, match="not open"):
        writer.as_langchain_vectorstore()
    with writer:
        pass
    with pytest.raises(kb.KBError, match="not open"):
        writer.clear()


def test_second_writer_waits_then_fails_clearly(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    other = client.get_default_project().get_knowledge_bank(core.id).as_core_knowledge_bank()
    with core.get_writer():
        started = time.monotonic()
        with pytest.raises(kb.WriterBusyError, match=core.id):
            with other.get_writer(timeout=0.3):
                pass
        assert time.monotonic() - started >= 0.3


def test_second_writer_proceeds_when_first_commits(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    released = threading.Event()
    order: list[str] = []

    def first() -> None:
        with core.get_writer() as writer:
            writer.as_langchain_vectorstore().add_texts(["first"], ids=["1"])
            released.wait(5)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.2)
    released.set()
    with core.get_writer(timeout=10) as writer:
        order.append("second")
        assert writer.transaction.count() == 1  # it starts from the first writer's commit
    thread.join()
    assert order == ["first", "second"]


def test_schema_violation_names_document_and_key_and_writes_nothing(client: EmbeddedClient) -> None:
    handle = _kb(client)
    settings = handle.get_settings()
    settings.set_metadata_schema({"source": "string", "start_index": "int", "published": "date"})
    settings.save()
    core = handle.as_core_knowledge_bank()
    good = Document(page_content="fine", metadata={"source": "guide", "start_index": 1, "published": "2024-05-01"})
    bad = Document(page_content="bad", metadata={"source": "guide", "start_index": "one"})
    with pytest.raises(kb.SchemaError, match=r"'b'.*start_index.*int"):
        with core.get_writer() as writer:
            writer.as_langchain_vectorstore().add_documents([good, bad], ids=["g", "b"])
    assert core.count() == 0
    with pytest.raises(kb.SchemaError, match="'author' is not in"):
        core.as_langchain_vectorstore().add_documents([Document(page_content="x", metadata={"author": "me"})])
    assert core.count() == 0
    core.as_langchain_vectorstore().add_documents([good], ids=["g"])
    assert core.get_documents(["g"])[0].metadata == {"source": "guide", "start_index": 1, "published": "2024-05-01"}


def test_filters_are_checked_against_the_schema(client: EmbeddedClient) -> None:
    handle = _kb(client)
    settings = handle.get_settings()
    settings.set_metadata_schema({"source": "string", "start_index": "int"})
    settings.save()
    core = handle.as_core_knowledge_bank()
    store = core.as_langchain_vectorstore()
    store.add_documents([Document(page_content=f"t{i}", metadata={"source": "s" + str(i % 2), "start_index": i})
                         for i in range(6)])
    docs = store.similarity_search("t", k=10, filter={"$and": [{"source": "s1"}, {"start_index": {"$gte": 3}}]})
    assert sorted(d.metadata["start_index"] for d in docs) == [3, 5]
    with pytest.raises(kb.FilterError, match="'color'"):
        store.similarity_search("t", filter={"color": "red"})
    with pytest.raises(kb.FilterError, match="start_index"):
        store.similarity_search("t", filter={"start_index": {"$gt": "three"}})
    with pytest.raises(kb.FilterError, match=r"\$regex"):
        store.similarity_search("t", filter={"source": {"$regex": "s.*"}})


def test_formatter_metadata_and_multimodal_images(client: EmbeddedClient) -> None:
    project = client.get_default_project()
    images = project.create_managed_folder("images")
    originals = project.create_managed_folder("originals")
    images.upload_file("/page1.png", FIXTURES / "images" / "page1.png")
    originals.upload_file("/solar.pdf", FIXTURES / "docs" / "solar.pdf")
    handle = _kb(client)
    settings = handle.get_settings()
    settings.set_metadata_schema({"source": "string", "start_index": "int"})  # formatter keys pass any schema
    settings.set_images_folder(f"{images.project_key}.{images.get_id()}")
    settings.save()
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        formatter = writer.get_metadata_formatter()
        doc = (formatter.with_original_document_ref(kb.ManagedFolderDocumentRef("/solar.pdf", originals.get_id()))
               .with_original_document_page_range(1, 1)
               .with_retrieval_content(image_paths=["/page1.png"])
               .format_metadata(Document(page_content="Solar panels make electricity.",
                                         metadata={"source": "guide", "start_index": 1})))
        missing = formatter.with_retrieval_content(image_paths=["/gone.png"]).format_metadata(
            Document(page_content="an orphan page", metadata={"source": "guide"}))
        writer.as_langchain_vectorstore().add_documents([doc, missing], ids=["solar", "orphan"])
    found = core.search(query="Solar panels make electricity.", k=2)
    solar = next(r for r in found if r.id == "solar")
    assert solar.image_paths == ["/page1.png"]
    assert core.get_images(solar) == [(FIXTURES / "images" / "page1.png").read_bytes()]
    docs = core.as_langchain_retriever(search_kwargs={"k": 2}).invoke("Solar panels make electricity.")
    solar_doc = next(d for d in docs if d.id == "solar")
    assert core.get_images(solar_doc) == [(FIXTURES / "images" / "page1.png").read_bytes()]
    assert '"page_range": {"end": 1, "start": 1}' in solar_doc.metadata["KB_DOCUMENT_INFO"]
    orphan = core.get_documents(["orphan"])[0]
    with pytest.raises(kb.ImageNotFoundError, match="/gone.png"):
        core.get_images(orphan)


def test_formatter_rejects_bad_input(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    with core.get_writer() as writer:
        formatter = writer.get_metadata_formatter()
        with pytest.raises(kb.InvalidInputError, match="before its start"):
            formatter.with_original_document_page_range(3, 1)
        with pytest.raises(kb.PathError, match=r"\.\."):
            formatter.with_retrieval_content(image_paths=["/../../etc/passwd"])
        with pytest.raises(kb.PathError):
            kb.ManagedFolderDocumentRef("../a.pdf", "abc")


def test_embedding_cache_means_rewriting_never_reembeds(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    embedder = client.get_llm_handle(FAKE_MODEL_ID).embedder
    store = core.as_langchain_vectorstore()
    store.add_texts(["alpha", "beta"], ids=["a", "b"])
    misses = embedder.misses
    store.add_texts(["alpha", "beta"], ids=["a", "b"])
    assert embedder.misses == misses


def test_retriever_search_types_and_mmr_options(client: EmbeddedClient) -> None:
    core = _kb(client).as_core_knowledge_bank()
    core.as_langchain_vectorstore().add_texts([f"text {i}" for i in range(10)], ids=[str(i) for i in range(10)])
    for search_type in ("similarity", "mmr", "keyword", "hybrid"):
        retriever = core.as_langchain_retriever(search_type=search_type, search_kwargs={"k": 3})
        assert len(retriever.invoke("text 3")) == 3, search_type
    threshold = core.as_langchain_retriever(search_type="similarity_score_threshold",
                                            search_kwargs={"k": 10, "score_threshold": 0.999})
    assert [d.page_content for d in threshold.invoke("text 3")] == ["text 3"]
    with pytest.raises(ValueError, match="search_type"):
        core.as_langchain_retriever(search_type="psychic")
    with pytest.raises(kb.UnsupportedSearchError, match="reranker"):
        core.as_langchain_vectorstore().semantic_hybrid_search("text 3")


def test_vector_only_knowledge_bank(client: EmbeddedClient) -> None:
    """keyword.index false: no BM25 tables or work, similarity as usual, keyword and hybrid refused clearly;
    the switch cannot flip on a non-empty knowledge bank, and only FAISS offers it."""
    import sqlite3

    from kb_base.errors import InvalidInputError, UnsupportedSearchError

    project = client.get_default_project()
    handle = project.create_knowledge_bank("vectors", embedding_llm_id=FAKE_MODEL_ID,
                                           settings={"keyword": {"index": False}})
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().add_texts(["red apples", "green pears", "blue plums"], ids=["a", "b", "c"])
    store = core.driver
    tables = {r[0] for r in sqlite3.connect(store.db_path).execute("SELECT name FROM sqlite_master")}
    assert not any(name.startswith("kw_") for name in tables), tables
    vector = core.langchain_embeddings().embed_query("green pears")
    assert core.search(vector=vector, k=1)[0].id == "b"
    for search_type in ("keyword", "hybrid"):
        with pytest.raises(UnsupportedSearchError, match="keyword index"):
            core.search(query="pears", k=1, search_type=search_type)
    settings = handle.get_settings()
    settings.set_keyword_settings({"index": True})
    with pytest.raises(InvalidInputError, match="keyword index"):
        settings.save()
    with pytest.raises(InvalidInputError, match="only be turned off on FAISS"):
        project.create_knowledge_bank("chroma-vectors", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="CHROMA",
                                      settings={"keyword": {"index": False}})
    with pytest.raises(InvalidInputError, match="true or false"):
        project.create_knowledge_bank("bad", embedding_llm_id=FAKE_MODEL_ID, settings={"keyword": {"index": "no"}})
    assert [i.name for i in project.list_knowledge_banks()] == ["vectors"]  # nothing half-created
