"""`kb create | list | info | search | delete` as a person runs them: the installed `kb` command in a subprocess,
on an embedded home and on a real `kb serve` (--url/--api-key and KB_URL/KB_API_KEY), with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document

import kb
from tests.support.server import ADMIN_KEY, KBServer

KB_BIN = Path(sys.executable).parent / "kb"
MODEL = "custom:fake6"  # the server's in-process model (tests/support/server.py); the embedded home uses the real one


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # the caller's KB_URL/KB_API_KEY must not leak in: each test says where the command goes
    base = {k: v for k, v in os.environ.items() if k not in ("KB_URL", "KB_API_KEY")}
    full_env = {**base, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([str(KB_BIN), *args], capture_output=True, text=True, env=full_env, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    server = KBServer(tmp_path_factory.mktemp("cli-server")).start()
    yield server
    server.stop()


def _fill(core: object) -> None:
    with core.get_writer() as writer:  # type: ignore[attr-defined]
        writer.as_langchain_vectorstore().add_documents([
            Document(page_content="Honeybees dance to tell each other where flowers are.", metadata={"topic": "bio"},
                     id="bees"),
            Document(page_content="Espresso is brewed by forcing hot water through coffee.",
                     metadata={"topic": "food"}, id="coffee"),
            Document(page_content="Ants follow scent trails to food.", metadata={"topic": "bio"}, id="ants"),
        ])


def test_help_lists_every_command_and_exit_code() -> None:
    top = run("--help")
    assert top.returncode == 0
    for command in ("create", "list", "info", "search", "delete", "serve", "ingest", "eval"):
        assert f"  {command} " in top.stdout
    assert "4 ambiguous name" in top.stdout
    for command, option in (("create", "--schema"), ("list", "--url"), ("info", "--api-key"),
                            ("search", "--filter"), ("delete", "--project")):
        shown = run(command, "--help")
        assert shown.returncode == 0 and option in shown.stdout and "exit codes:" in shown.stdout
    assert run("search").returncode == 2  # missing arguments: usage error
    assert run("search", "x", "q", "--type", "nope").returncode == 2


def test_embedded_home(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    created = run("create", "papers", "--schema", "topic=string", "--json", *home)
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["name"] == "papers" and info["metadata_schema"] == {"topic": "string"}
    assert info["vector_store_type"] == "FAISS" and info["embedding_llm_id"] == "local:all-MiniLM-L6-v2"

    with kb.api_client(home=tmp_path) as client:  # write through the Python API, read through the CLI
        _fill(client.get_default_project().get_knowledge_bank(info["id"]).as_core_knowledge_bank())

    listed = run("list", *home)
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STORE", "MODEL", "DOCUMENTS"]
    assert row.split() == [info["id"], "papers", "FAISS", "local:all-MiniLM-L6-v2", "3"]

    shown = json.loads(run("info", info["id"], "--json", *home).stdout)  # by id
    assert shown["documents"] == 3 and shown["name"] == "papers"
    assert "schema:        topic=string" in run("info", "papers", *home).stdout  # by name

    found = run("search", "papers", "where are the flowers", "--type", "hybrid", "--k", "5",
                "--filter", '{"topic": "bio"}', "--json", *home)
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert [r["id"] for r in results][0] == "bees" and {r["id"] for r in results} == {"bees", "ants"}
    assert set(results[0]["scores"]) >= {"dense", "keyword"}
    table = run("search", "papers", "coffee", "--type", "keyword", "--k", "1", *home).stdout.splitlines()
    assert table[0].split()[:3] == ["#", "ID", "SCORE"] and table[1].split()[1] == "coffee"

    bad_filter = run("search", "papers", "x", "--filter", '{"colour": "red"}', *home)
    assert bad_filter.returncode == 1 and "colour" in bad_filter.stderr
    assert run("search", "papers", "x", "--filter", "{nope", *home).returncode == 1
    assert run("create", "bad", "--schema", "a=colour", *home).returncode == 1
    assert run("create", "papers", *home).returncode == 1  # the name is taken: nothing written
    assert run("create", "x", "--model", "local:nope", *home).returncode == 3
    missing = run("info", "nothing-here", *home)
    assert missing.returncode == 3 and "nothing-here" in missing.stderr
    assert run("list", "--project", "NOPE", *home).returncode == 3

    # a name that is also another knowledge bank's id is ambiguous: the error lists both ids
    other = json.loads(run("create", info["id"], "--json", *home).stdout)
    ambiguous = run("info", info["id"], *home)
    assert ambiguous.returncode == 4
    assert info["id"] in ambiguous.stderr and other["id"] in ambiguous.stderr

    deleted = run("delete", "papers", *home)
    assert deleted.returncode == 0 and info["id"] in deleted.stdout
    remaining = json.loads(run("list", "--json", *home).stdout)
    assert [i["id"] for i in remaining] == [other["id"]]
    assert run("delete", "papers", *home).returncode == 3


def test_server_with_url_and_environment(server: KBServer, tmp_path: Path) -> None:
    remote = ["--url", server.url, "--api-key", ADMIN_KEY]
    created = run("create", "remote-papers", "--model", MODEL, "--schema", "topic=string", "--json", *remote)
    assert created.returncode == 0, created.stderr
    kb_id = json.loads(created.stdout)["id"]
    with kb.api_client(url=server.url, api_key=ADMIN_KEY) as client:  # the server really holds it
        core = client.get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank()
        _fill(core)
        assert core.settings["metadata_schema"] == {"topic": "string"}

    env = {"KB_URL": server.url, "KB_API_KEY": ADMIN_KEY}
    listed = json.loads(run("list", "--json", env=env).stdout)
    assert [(i["name"], i["documents"], i["embedding_llm_id"]) for i in listed] == [("remote-papers", 3, MODEL)]
    found = json.loads(run("search", "remote-papers", "scent trails", "--type", "keyword", "--filter",
                           '{"topic": "bio"}', "--json", env=env).stdout)
    assert [r["id"] for r in found["results"]][0] == "ants"
    assert {r["id"] for r in found["results"]} <= {"ants", "bees"}

    # kb ingest and kb eval go to the server too (the file is streamed to POST .../ingest)
    rows = tmp_path / "more.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{n}", "text": f"row {n} about owls", "topic": "bio"}) + "\n"
                            for n in range(5)) + json.dumps({"id": "bad", "text": "x", "topic": 3}) + "\n")
    ingested = run("ingest", str(rows), "--kb", "remote-papers", "--id-column", "id", "--quiet", env=env)
    assert ingested.returncode == 1, ingested.stderr  # one row rejected: the ingest command's own status 1
    assert "5 written" in ingested.stdout and "1 rejected" in ingested.stdout and "topic" in ingested.stderr
    assert json.loads(run("info", "remote-papers", "--json", env=env).stdout)["documents"] == 8
    (tmp_path / "q.jsonl").write_text(json.dumps({"_id": "q", "text": "owls"}) + "\n")
    (tmp_path / "qrels.tsv").write_text("q\tr0#0\t1\n")
    evaluated = run("eval", "--kb", "remote-papers", "--queries", str(tmp_path / "q.jsonl"), "--qrels",
                    str(tmp_path / "qrels.tsv"), "--search-types", "keyword", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.splitlines()[2].split()[0] == "keyword"

    reader = server.keys().create("cli-reader", roles={"DEFAULT": "reader"})
    as_reader = {"KB_URL": server.url, "KB_API_KEY": reader}
    assert run("info", "remote-papers", env=as_reader).returncode == 0
    refused = run("delete", "remote-papers", env=as_reader)
    assert refused.returncode == 5 and "admin" in refused.stderr
    assert run("list", env={"KB_URL": server.url, "KB_API_KEY": "kb_x_wrongwrongwrongwrong"}).returncode == 5
    assert run("list", "--url", "http://127.0.0.1:9", "--api-key", ADMIN_KEY).returncode == 6
    assert run("list", "--url", server.url, "--home", str(tmp_path)).returncode == 1  # one place, not two

    assert run("delete", kb_id, env=env).returncode == 0
    assert json.loads(run("list", "--json", env=env).stdout) == []


def test_a_store_that_is_down(tmp_path: Path) -> None:
    """With its Chroma server down, a knowledge bank is still listed (kb keeps the count in its own SQLite commit
    point), and a search on it exits 6 naming the server, while the other knowledge banks answer."""
    from tests.support.chroma_server import ChromaServer

    chroma = ChromaServer(tmp_path / "chroma-data").start()
    home = ["--home", str(tmp_path / "home")]
    try:
        with kb.api_client(home=tmp_path / "home") as client:
            client.create_connection("chroma", "chroma", {"url": chroma.url})
        created = run("create", "on-chroma", "--store", "chroma", "--settings", '{"connection": "chroma"}', *home)
        assert created.returncode == 0, created.stderr
        assert run("create", "on-faiss", *home).returncode == 0
        with kb.api_client(home=tmp_path / "home") as client:
            from kb.lookup import find_knowledge_bank

            for name in ("on-chroma", "on-faiss"):
                _fill(find_knowledge_bank(client.get_default_project(), name).as_core_knowledge_bank())
        chroma.stop()
        listed = run("list", *home)
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[1]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert rows["on-chroma"][2:] == ["CHROMA", "local:all-MiniLM-L6-v2", "3"] and rows["on-faiss"][-1] == "3"
        down = run("search", "on-chroma", "anything", *home)
        assert down.returncode == 6, (down.returncode, down.stderr)
        assert chroma.url in down.stderr
        assert run("search", "on-faiss", "anything", *home).returncode == 0
    finally:
        chroma.stop()
