"""What the issue-33 parity adds, run on the embedded client and on the remote client over real HTTP (uvicorn on a
loopback port) side by side: each scenario runs on both, must behave as written here, and must give the same
results and the same error classes and messages on both. Plus what only the service has: roles, 4xx JSON
errors, and connection secrets that never come back and never reach the log.
"""

from __future__ import annotations

import io
import itertools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.documents import Document

import kb
from kb.client import EmbeddedClient
from kb.remote_transport import RemoteForbiddenError
from tests.conftest import FAKE_MODEL_ID
from tests.support.server import ADMIN_KEY, KBServer

# the server, remote and embedded module fixtures these tests compare the two clients with
pytest_plugins = ["tests.support.remote_pair"]

SPEC = Path("/usr/share/doc/dpkg/spec")  # real text files (dpkg is on every Debian system), read in place
SECRET = "sk-" + "s3cr3t" * 6
ES_PASSWORD = "hunter2-" + "x" * 12
_keys = itertools.count()


def outcome(action: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", the result) or (error class, message)."""
    try:
        return "ok", action()
    except kb.KBError as exc:
        return type(exc).__name__, str(exc)


def both(embedded: EmbeddedClient, remote: Any, scenario: Callable[[Any, str], list[Any]]) -> list[Any]:
    """Run ``scenario(client, project_key)`` on a fresh project of each client; the observations must match."""
    key = f"P{next(_keys)}_{uuid.uuid4().hex[:6]}"
    seen = []
    for client in (embedded, remote):
        client.create_project(key)
        seen.append(scenario(client, key))
    assert seen[0] == seen[1], f"embedded and remote differ:\n{seen[0]}\n{seen[1]}"
    return seen[0]


def test_connections_with_secrets_masked(embedded: EmbeddedClient, remote: Any, server: KBServer) -> None:
    name = f"es-{uuid.uuid4().hex[:6]}"

    def scenario(client: Any, _: str) -> list[Any]:
        client.create_connection(name, "elasticsearch", {"url": f"https://kb:{ES_PASSWORD}@es.example:9200",
                                                         "api_key": SECRET, "shards": 1})
        listed = [c for c in client.list_connections() if c["name"] == name]
        steps: list[Any] = [listed,
                            outcome(lambda: client.create_connection(name, "elasticsearch", {"url": "http://x"})),
                            outcome(lambda: client.create_connection(name, "chroma", {"url": "http://c:8000"},
                                                                     replace=True)),
                            [c for c in client.list_connections() if c["name"] == name],
                            outcome(lambda: client.create_connection(name, "chroma", ["not", "a", "mapping"])),
                            outcome(lambda: client.create_connection("bad name!", "chroma", {})),
                            outcome(lambda: client.delete_connection(name)),
                            [c for c in client.list_connections() if c["name"] == name],
                            outcome(lambda: client.delete_connection(name))]
        return steps

    steps = both(embedded, remote, scenario)
    assert steps[0] == [{"name": name, "type": "elasticsearch", "url": "https://kb:***@es.example:9200",
                         "api_key": "***", "shards": 1}]
    assert steps[1] == ("AlreadyExistsError", f"connection {name!r} already exists")
    assert steps[2] == ("ok", None)
    assert steps[3] == [{"name": name, "type": "chroma", "url": "http://c:8000"}]
    assert steps[4] == ("InvalidInputError", "connection params must be a mapping")
    assert steps[5][0] == "InvalidInputError" and "connection name" in steps[5][1]
    assert steps[6] == ("ok", None) and steps[7] == []
    assert steps[8] == ("NotFoundError", f"connection {name!r} does not exist")
    # the secrets went to the server once and never came back in any answer, nor into its log
    raw = httpx.post(f"{server.url}/v1/connections", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     json={"name": name, "type": "openai-compatible", "params": {"api_key": SECRET, "models": []}})
    assert raw.status_code == 201 and SECRET not in raw.text and raw.json()["api_key"] == "***"
    assert SECRET not in httpx.get(f"{server.url}/v1/connections/{name}",
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    log = server.log.read_text()
    assert '"msg": "request"' in log and "/v1/connections" in log  # the log is written: the check means something
    assert SECRET not in log and ES_PASSWORD not in log
    remote.delete_connection(name)


def test_a_connection_in_use_is_not_deleted(embedded: EmbeddedClient, remote: Any, server: KBServer) -> None:
    suffix = uuid.uuid4().hex[:6]
    model_conn, rerank_conn = f"oa-{suffix}", f"rr-{suffix}"

    def scenario(client: Any, key: str) -> list[Any]:
        client.create_connection(model_conn, "openai-compatible",
                                 {"base_url": "http://127.0.0.1:9/v1", "api_key": SECRET, "models": ["m"]},
                                 replace=True)
        client.create_connection(rerank_conn, "rerank", {"api_key": SECRET}, replace=True)
        reranker = {"type": "http", "url": "http://127.0.0.1:9/rerank", "model": "x", "connection": rerank_conn}
        knowledge_bank = client.get_project(key).create_knowledge_bank(
            "uses-both", embedding_llm_id=f"openai:{model_conn}:m", settings={"search": {"reranker": reranker}})
        steps = [outcome(lambda: client.delete_connection(model_conn)),
                 outcome(lambda: client.delete_connection(rerank_conn)),
                 sorted(c["name"] for c in client.list_connections() if c["name"].endswith(suffix))]
        client.delete_knowledge_bank(key, knowledge_bank.id)
        steps += [outcome(lambda: client.delete_connection(model_conn)),
                  outcome(lambda: client.delete_connection(rerank_conn))]
        return [(step[0], step[1].replace(key, "<project>")) if isinstance(step, tuple) and step[1] else step
                for step in steps]

    steps = both(embedded, remote, scenario)
    assert steps[0] == ("InUseError", f"connection {model_conn!r} is used by <project>/uses-both (embedding "
                                      f"model): change or delete those knowledge banks first")
    assert steps[1][0] == "InUseError" and "<project>/uses-both (reranker)" in steps[1][1]
    assert steps[2] == sorted([model_conn, rerank_conn])  # nothing deleted while in use
    assert steps[3] == ("ok", None) and steps[4] == ("ok", None)


def test_connections_are_for_global_admins_and_errors_are_json(remote: Any, server: KBServer) -> None:
    project_admin = server.keys().create("project admin", roles={"DEFAULT": "admin"})
    limited = kb.api_client(url=server.url, api_key=project_admin)
    try:
        for action in (limited.list_connections, lambda: limited.delete_connection("x"),
                       lambda: limited.create_connection("x", "chroma", {"url": "http://c:8000"})):
            with pytest.raises(RemoteForbiddenError, match="global admin"):
                action()
    finally:
        limited.close()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for method, path, body, status, code in [
        ("POST", "/v1/connections", {"name": "x"}, 422, "invalid_request"),
        ("POST", "/v1/connections", {"name": "x", "type": "chroma", "params": {}, "extra": 1}, 422,
         "invalid_request"),
        ("DELETE", "/v1/connections/nope", None, 404, "not_found"),
        ("GET", "/v1/connections/nope", None, 404, "not_found"),
        ("DELETE", "/v1/projects/NOPE", None, 404, "not_found"),
        ("DELETE", "/v1/projects/DEFAULT", None, 422, "invalid_input"),
    ]:
        response = httpx.request(method, f"{server.url}{path}", headers=headers, json=body)
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["error"]["code"] == code
    assert httpx.get(f"{server.url}/v1/connections").status_code == 401


def test_project_delete_and_managed_folder_delete(embedded: EmbeddedClient, remote: Any, server: KBServer) -> None:
    def scenario(client: Any, key: str) -> list[Any]:
        project = client.get_project(key)
        folder = project.create_managed_folder("sources")
        folder.upload_data("/a.txt", b"a")
        return [outcome(project.delete),  # not empty: a folder
                outcome(lambda: project.delete_managed_folder("nope")),
                outcome(lambda: project.delete_managed_folder("sources")),  # by name
                project.list_managed_folders(),
                outcome(project.delete),
                outcome(lambda: client.get_project(key)),
                outcome(project.delete),  # already gone
                outcome(client.get_default_project().delete)]

    steps = both(embedded, remote, scenario)
    assert steps[0][0] == "InvalidInputError" and "not empty" in steps[0][1]
    assert steps[1][0] == "NotFoundError" and steps[2] == ("ok", None) and steps[3] == []
    assert steps[4] == ("ok", None)
    assert steps[5][0] == "NotFoundError" and steps[6][0] == "NotFoundError"
    assert steps[7] == ("InvalidInputError", "the default project cannot be deleted")
    # deleting a project is a global admin's; deleting a folder the project admin's
    writer_key = server.keys().create("writer", roles={"DEFAULT": "writer"})
    limited = kb.api_client(url=server.url, api_key=writer_key)
    remote.get_default_project().create_managed_folder("keep-me")
    try:
        with pytest.raises(RemoteForbiddenError):
            limited.get_default_project().delete_managed_folder("keep-me")
        with pytest.raises(RemoteForbiddenError):
            limited.get_default_project().delete()
    finally:
        limited.close()
    assert "keep-me" in [f["name"] for f in remote.get_default_project().list_managed_folders()]


def test_knowledge_bank_shortcuts(embedded: EmbeddedClient, remote: Any) -> None:
    def scenario(client: Any, key: str) -> list[Any]:
        kb_id = client.create_knowledge_bank(key, "notes", FAKE_MODEL_ID)
        items = [(i.id == kb_id, i.name, i.embedding_llm_id) for i in client.get_project(key).list_knowledge_banks()]
        return [isinstance(kb_id, str), items,
                outcome(lambda: client.create_knowledge_bank(key, "notes", FAKE_MODEL_ID))[0],
                outcome(lambda: client.create_knowledge_bank(key, "x", FAKE_MODEL_ID, "PINECONE"))[0],
                outcome(lambda: client.delete_knowledge_bank(key, kb_id)),
                client.get_project(key).list_knowledge_banks(),
                outcome(lambda: client.delete_knowledge_bank(key, kb_id))[0]]

    assert both(embedded, remote, scenario) == [True, [(True, "notes", FAKE_MODEL_ID)], "AlreadyExistsError",
                                                "UnknownStoreTypeError", ("ok", None), [], "NotFoundError"]


def test_managed_folder_files(embedded: EmbeddedClient, remote: Any) -> None:
    content = (SPEC / "frontend-api.txt").read_bytes()

    def scenario(client: Any, key: str) -> list[Any]:
        folder = client.get_project(key).create_managed_folder("docs")
        steps: list[Any] = [folder.full_id == f"{key}.{folder.id}", folder.exists("/spec/frontend-api.txt"),
                            folder.upload_file("/spec/frontend-api.txt", SPEC / "frontend-api.txt"),
                            folder.exists("spec/frontend-api.txt"),
                            folder.upload_stream("/copy.txt", io.BytesIO(content))]
        with folder.get_writer("/written.txt") as writer:
            writer.write(b"part one, ")
            writer.write(b"part two")
            steps.append(folder.exists("/written.txt"))  # nothing appears before the writer closes
        steps.append(folder.read("/written.txt"))
        try:
            with folder.get_writer("/broken.txt") as writer:
                writer.write(b"half")
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        local = folder.local_file("/spec/frontend-api.txt")
        steps += [folder.exists("/broken.txt"), local.read_bytes() == content, local.name,
                  outcome(lambda: folder.local_file("/missing.txt"))[0], outcome(lambda: folder.exists("/../x"))[0],
                  folder.list_paths()]
        with folder.get_download_stream("/copy.txt") as stream:
            steps.append(stream.read() == content)
        return steps

    assert both(embedded, remote, scenario) == [
        True, False, len(content), True, len(content), False, b"part one, part two", False, True,
        "frontend-api.txt", "NotFoundError", "PathError", ["/copy.txt", "/spec/frontend-api.txt", "/written.txt"],
        True]


def test_remote_local_file_copies_go_with_the_client(server: KBServer) -> None:
    client = kb.api_client(url=server.url, api_key=ADMIN_KEY)
    folder = client.get_default_project().create_managed_folder(f"copies-{uuid.uuid4().hex[:6]}")
    folder.upload_data("/a.txt", b"abc")
    local = folder.local_file("/a.txt")
    assert local.read_bytes() == b"abc"
    client.close()
    assert not local.exists()


def test_writer_add_documents_delete_and_refresh(embedded: EmbeddedClient, remote: Any) -> None:
    texts = [line for line in (SPEC / "protected-field.txt").read_text().split("\n\n") if line.strip()][:6]

    def scenario(client: Any, key: str) -> list[Any]:
        handle = client.get_project(key).create_knowledge_bank("spec", embedding_llm_id=FAKE_MODEL_ID)
        core = handle.as_core_knowledge_bank()
        with core.get_writer() as writer:
            ids = writer.add_documents([Document(page_content=t, metadata={"n": i}) for i, t in enumerate(texts)],
                                       ids=[f"p{i}" for i in range(len(texts))])
            deleted = writer.delete(["p0", "p1"])
            seen_inside = core.count()  # readers see the last commit only
        steps: list[Any] = [ids, deleted, seen_inside, core.count(),
                            sorted(d.id for d in core.get_documents([f"p{i}" for i in range(len(texts))]))]
        try:
            with core.get_writer() as writer:
                writer.delete(["p2"])
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        steps.append(core.count())
        # another handle saves a schema; this one sees it after refresh()
        settings = handle.get_settings()
        settings.set_metadata_schema({"n": "int"})
        settings.save()
        steps.append(core.schema)
        core.refresh()
        steps.append(core.schema)
        steps.append(outcome(lambda: core.count(filter={"n": "two"}))[0])
        steps.append(core.count(filter={"n": {"$gte": 4}}))
        with core.get_writer() as writer:
            writer.clear()
            writer.add_documents([Document(page_content="only", metadata={"n": 1})], ids=["only"])
        steps.append(core.count())
        return steps

    n = len(texts)
    assert both(embedded, remote, scenario) == [
        [f"p{i}" for i in range(n)], 2, 0, n - 2, [f"p{i}" for i in range(2, n)], n - 2, {}, {"n": "int"},
        "FilterError", 2, 1]


def test_images_folder_and_settings_accessors(embedded: EmbeddedClient, remote: Any) -> None:
    def scenario(client: Any, key: str) -> list[Any]:
        handle = client.get_project(key).create_knowledge_bank("shots", embedding_llm_id=FAKE_MODEL_ID)
        core = handle.as_core_knowledge_bank()
        missing = outcome(core.images_folder)[0]
        folder = core.ensure_images_folder()
        again = core.ensure_images_folder()
        settings = handle.get_settings()
        settings.set_keyword_settings({"index": True})
        return [missing, folder.name, again.id == folder.id, core.images_folder().id == folder.id,
                settings.get_images_folder() == folder.full_id, settings.embedding_llm_id,
                settings.vector_store_type, settings.get_store_settings(), outcome(settings.save)]

    assert both(embedded, remote, scenario) == ["NotFoundError", "shots pages", True, True, True, FAKE_MODEL_ID,
                                                "FAISS", {}, ("ok", None)]


def test_remote_embedding_model_description(embedded: EmbeddedClient, remote: Any) -> None:
    described = [c.get_default_project().get_llm(FAKE_MODEL_ID).description for c in (embedded, remote)]
    assert described[0] == described[1] and described[0]


def test_formatter_images_and_search_types(embedded: EmbeddedClient, remote: Any) -> None:
    """tests/test_knowledge_bank.py's formatter, images and retriever cases, on both clients."""
    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    page = (fixtures / "images" / "page1.png").read_bytes()

    def scenario(client: Any, key: str) -> list[Any]:
        project = client.get_project(key)
        images = project.create_managed_folder("images")
        images.upload_data("/page1.png", page)
        handle = project.create_knowledge_bank("papers", embedding_llm_id=FAKE_MODEL_ID)
        settings = handle.get_settings()
        settings.set_images_folder(images.full_id)
        settings.save()
        core = handle.as_core_knowledge_bank()
        with core.get_writer() as writer:
            formatter = writer.get_metadata_formatter()
            doc = (formatter.with_original_document_ref(kb.ManagedFolderDocumentRef("/solar.pdf", images.get_id()))
                   .with_original_document_page_range(1, 1).with_retrieval_content(image_paths=["/page1.png"])
                   .format_metadata(Document(page_content="Solar panels make electricity.")))
            orphan = formatter.with_retrieval_content(image_paths=["/gone.png"]).format_metadata(
                Document(page_content="an orphan page"))
            writer.add_documents([doc, orphan], ids=["solar", "orphan"])
            writer.add_documents([Document(page_content=f"text {i}") for i in range(6)],
                                 ids=[f"t{i}" for i in range(6)])
        solar = core.get_documents(["solar"])[0]
        steps: list[Any] = [core.get_images(solar) == [page], outcome(lambda: core.get_images(
            core.get_documents(["orphan"])[0]))[0], solar.metadata["KB_DOCUMENT_INFO"].replace(images.id, "<id>")]
        for search_type in ("similarity", "mmr", "keyword", "hybrid"):
            found = core.as_langchain_retriever(search_type=search_type, search_kwargs={"k": 3}).invoke("text 3")
            steps.append((search_type, len(found), found[0].page_content if search_type == "keyword" else None))
        vector = core.langchain_embeddings().embed_query("text 3")
        steps.append([d.id for d, _ in core.similarity_documents(vector, k=1)])
        return steps

    steps = both(embedded, remote, scenario)
    assert steps[:2] == [True, "ImageNotFoundError"] and '"page_range": {"end": 1, "start": 1}' in steps[2]
    assert steps[3:7] == [("similarity", 3, None), ("mmr", 3, None), ("keyword", 3, "text 3"), ("hybrid", 3, None)]
    assert steps[7] == ["t3"]
