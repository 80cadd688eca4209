"""Folder sync from the remote client and ``kb sync --url``, over real HTTP, against the embedded sync.

``core.sync_folder`` on the remote client runs the server's sync job and returns the same ``SyncReport``
(the same files added, updated, unchanged and removed, the same chunks) as the embedded call on the same
documents; a local directory is mirrored into a managed folder first, moving only what changed. The documents
are dpkg's specification texts (/usr/share/doc/dpkg/spec), copied into temporary directories to be changed.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import kb
from api import cli_sync
from kb.client import EmbeddedClient
from tests.conftest import FAKE_MODEL_ID
from tests.support.openai_embeddings_server import free_port
from tests.support.server import ADMIN_KEY, KBServer
from writers.sync import SyncReport, acquire_sync_lock

# the server, remote and embedded module fixtures these tests compare the two clients with
pytest_plugins = ["tests.support.remote_pair"]

SPEC = Path("/usr/share/doc/dpkg/spec")
COMPARED = ("added", "updated", "unchanged", "removed", "failed", "files_total", "files_to_process",
            "files_processed", "chunks_written", "chunks_removed")
_names = itertools.count()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A copy of the spec texts, to change between syncs."""
    target = tmp_path / "spec"
    shutil.copytree(SPEC, target)
    assert len(list(target.iterdir())) >= 4
    return target


def counts(report: SyncReport) -> dict[str, Any]:
    return {name: sorted(value) if isinstance(value, list) and name != "failed" else value
            for name, value in ((n, getattr(report, n)) for n in COMPARED)}


def new_core(client: Any) -> Any:
    return client.get_default_project().create_knowledge_bank(f"spec-{next(_names)}", embedding_llm_id=FAKE_MODEL_ID) \
        .as_core_knowledge_bank()


def change(docs: Path) -> None:
    """One file edited, one removed, one hidden file added (not a document)."""
    (docs / "frontend-api.txt").write_text((docs / "frontend-api.txt").read_text() + "\nA paragraph added later.\n")
    (docs / "protected-field.txt").unlink()
    (docs / ".notes.swp").write_bytes(b"editor swap file")


def test_sync_of_a_managed_folder_matches_the_embedded_sync(embedded: EmbeddedClient, remote: Any, docs: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    reports: list[list[dict[str, Any]]] = []
    for client in (embedded, remote):
        core = new_core(client)
        folder = client.get_default_project().create_managed_folder(f"{core.name} docs")
        for path in sorted(SPEC.iterdir()):
            folder.upload_file(f"/{path.name}", path)
        first = core.sync_folder(folder, chunk_size=800, chunk_overlap=100, progress=True)
        assert f"sync {folder.name}" in capfd.readouterr().err  # the same progress bar, on stderr
        second = core.sync_folder(folder, chunk_size=800, chunk_overlap=100)
        folder.upload_data("/frontend-api.txt", (SPEC / "frontend-api.txt").read_bytes() + b"\nLater.\n")
        folder.delete_path("/protected-field.txt")
        third = core.sync_folder(folder.get_id(), chunk_size=800, chunk_overlap=100) if client is remote else \
            core.sync_folder(folder, chunk_size=800, chunk_overlap=100)
        assert isinstance(third, SyncReport)
        reports.append([counts(first), counts(second), counts(third), {"count": core.count()}])
    assert reports[0] == reports[1]
    first, second, third, stored = reports[0]
    names = sorted(f"/{p.name}" for p in SPEC.iterdir())
    assert first["added"] == names and first["chunks_written"] > len(names)
    assert second["unchanged"] == names and second["chunks_written"] == 0
    assert third["updated"] == ["/frontend-api.txt"] and third["removed"] == ["/protected-field.txt"]
    assert stored["count"] > 0


def test_sync_of_a_local_directory_uploads_only_what_changed(embedded: EmbeddedClient, remote: Any,
                                                             docs: Path) -> None:
    embedded_core, remote_core = new_core(embedded), new_core(remote)
    puts: list[str] = []
    hooks = remote.transport.http.event_hooks
    remote.transport.http.event_hooks = {**hooks, "request": [
        lambda request: puts.append(request.url.path) if request.method == "PUT" else None]}
    try:
        runs = []
        for step in range(3):
            if step == 2:
                change(docs)
            puts.clear()
            mine = embedded_core.sync_folder(docs)
            theirs = remote_core.sync_folder(docs)
            assert counts(mine) == counts(theirs), step
            runs.append((counts(theirs), [p.rsplit("/", 1)[-1] for p in puts]))
    finally:
        remote.transport.http.event_hooks = hooks
    assert len(runs[0][0]["added"]) == 4 and len([p for p in runs[0][1] if p.endswith(".txt")]) == 4
    assert runs[1][0]["unchanged"] == runs[0][0]["added"]
    assert runs[1][1] == ["%2Ekb-sync-source.json"] or runs[1][1] == [".kb-sync-source.json"]  # only the marker
    assert runs[2][0]["updated"] == ["/frontend-api.txt"] and runs[2][0]["removed"] == ["/protected-field.txt"]
    assert [p for p in runs[2][1] if not p.endswith(".json")] == ["frontend-api.txt"]
    folder = remote.get_default_project().get_managed_folder(f"{remote_core.name} sources")
    assert sorted(folder.list_paths()) == ["/.kb-sync-source.json", "/frontend-api.txt", "/rootless-builds.txt",
                                           "/triggers.txt"]  # the swap file stayed home, the removed file went


def test_bad_options_and_unknown_folders_fail_alike(embedded: EmbeddedClient, remote: Any, docs: Path) -> None:
    seen = []
    for client in (embedded, remote):
        core = new_core(client)
        outcomes = []
        for args, options in (((docs,), {"chunk_size": 100, "chunk_overlap": 100}),
                              ((docs,), {"extraction": "psychic"}), ((docs,), {"colour": "blue"}),
                              ((str(docs / "missing"),), {})):
            with pytest.raises(kb.KBError) as caught:
                core.sync_folder(*args, **options)
            outcomes.append((type(caught.value).__name__, str(caught.value)))
        seen.append(outcomes)
    assert [o[0] for o in seen[0]] == ["InvalidInputError", "InvalidInputError", "InvalidInputError",
                                       "NotFoundError"]
    assert seen[0][:3] == seen[1][:3]  # the same messages: the remote client checks before sending
    assert seen[1][3][0] == "NotFoundError" and "missing" in seen[1][3][1]


def test_kb_sync_url_mirrors_then_syncs_on_the_server(remote: Any, server: KBServer, embedded: EmbeddedClient,
                                                       docs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{next(_names)}"
    remote.get_default_project().create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID)
    argv = [str(docs), "--kb", name, "--url", server.url, "--api-key", ADMIN_KEY, "--quiet",
            "--report", str(tmp_path / "report.json")]
    outputs = []
    for step in range(3):
        if step == 2:
            change(docs)
        assert cli_sync.main(argv) == 0
        captured = capsys.readouterr()
        outputs.append((captured.out, captured.err, json.loads((tmp_path / "report.json").read_text())))
    assert "4 files uploaded" in outputs[0][1] and "4 files: 4 added" in outputs[0][0]
    assert "0 files uploaded" in outputs[1][1] and "4 unchanged" in outputs[1][0]
    assert "1 files uploaded" in outputs[2][1] and "1 deleted" in outputs[2][1]
    assert "1 updated" in outputs[2][0] and "1 removed" in outputs[2][0]
    # the printed report is the embedded sync's, on the same directory
    mirror = new_core(embedded)
    shutil.rmtree(docs)
    shutil.copytree(SPEC, docs)
    mirror.sync_folder(docs)
    change(docs)
    expected = mirror.sync_folder(docs)
    got = SyncReport(**{k: v for k, v in outputs[2][2].items() if k != "exit_status"})
    assert counts(got) == counts(expected)
    assert outputs[2][0].strip() == got.summary()


def test_kb_sync_url_never_empties_a_folder_it_did_not_fill(remote: Any, server: KBServer, docs: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    name = f"guard-{next(_names)}"
    remote.get_default_project().create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID)
    foreign = remote.get_default_project().create_managed_folder(f"{name} photos")
    foreign.upload_data("/holiday.jpg", b"\xff\xd8 not really a photo")
    argv = [str(docs), "--kb", name, "--url", server.url, "--api-key", ADMIN_KEY, "--quiet", "--folder", foreign.name]
    assert cli_sync.main(argv) == 2
    assert "did not upload" in capsys.readouterr().err
    assert foreign.list_paths() == ["/holiday.jpg"]
    assert cli_sync.main([*argv[:-2], "--home", "/tmp/never"]) == 2  # --url and --home: one or the other
    assert "not both" in capsys.readouterr().err
    # a managed folder as SOURCE: the server syncs it as it is, nothing uploaded
    folder = remote.get_default_project().create_managed_folder(f"{name} server side")
    folder.upload_file("/triggers.txt", SPEC / "triggers.txt")
    assert cli_sync.main([folder.name, *argv[1:-2]]) == 0
    assert capsys.readouterr().out.startswith("1 files: 1 added")
    unauthorised = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/x/sync-jobs", json={})
    assert unauthorised.status_code == 401 and unauthorised.json()["error"]["code"] == "unauthenticated"


def _lock_of(home: Path, kb_id: str) -> Any:
    """Hold a knowledge bank's sync lock from this process, as a ``kb sync`` running elsewhere would."""
    folder = home / "projects" / "DEFAULT" / "knowledge-banks" / kb_id
    return acquire_sync_lock(SimpleNamespace(folder=folder, id=kb_id))  # type: ignore[arg-type]


def test_a_busy_knowledge_bank_is_the_same_error_and_lock_timeout_waits(
        embedded: EmbeddedClient, remote: Any, server: KBServer, docs: Path) -> None:
    seen = []
    for client, home in ((embedded, embedded.home), (remote, server.home)):
        core = new_core(client)
        lock = _lock_of(home, core.id)
        try:
            with pytest.raises(kb.errors.SyncBusyError) as caught:
                core.sync_folder(docs, lock_timeout=0.3)
            seen.append(str(caught.value).replace(core.id, "<id>"))
            threading.Timer(0.5, lock.close).start()  # the other sync ends: a wait of 10 s is enough
            assert len(core.sync_folder(docs, lock_timeout=10).added) == 4
        finally:
            lock.close()
    assert seen[0] == seen[1] == "knowledge bank <id> is busy: another folder sync is running on it"


def test_a_failed_job_raises_its_error_class(embedded: EmbeddedClient, remote: Any, docs: Path) -> None:
    """A sync whose embedding endpoint is down fails with EmbeddingError on both clients (the connection that
    points at it made through each client's create_connection)."""
    name = f"dead-{next(_names)}"
    seen = []
    for client in (embedded, remote):
        client.create_connection(name, "openai-compatible", {"base_url": f"http://127.0.0.1:{free_port()}/v1",
                                                             "api_key": "sk-dead", "models": ["m"], "timeout": 2})
        core = client.get_default_project().create_knowledge_bank(
            f"{name}-kb", embedding_llm_id=f"openai:{name}:m").as_core_knowledge_bank()
        with pytest.raises(kb.KBError) as caught:
            core.sync_folder(docs)
        seen.append(type(caught.value))
    assert seen == [kb.EmbeddingError, kb.EmbeddingError]


def test_include_and_embed_context_reach_the_server(embedded: EmbeddedClient, remote: Any, docs: Path) -> None:
    """Every sync option the embedded sync takes travels to the server's job (two were dropped on the way)."""
    results = []
    for client in (embedded, remote):
        core = new_core(client)
        report = core.sync_folder(docs, include=["/frontend-*"], embed_context=True, chunk_size=800,
                                  chunk_overlap=100)
        results.append((counts(report), core.count()))
    assert results[0] == results[1]
    assert results[0][0]["added"] == ["/frontend-api.txt"], results[0]
    with pytest.raises(kb.InvalidInputError, match="engine"):
        new_core(remote).sync_folder(docs, engine=object())
