"""`kb doctor` and `kb repair` as a person runs them (the installed `kb` command, an embedded home): a FAISS
and a Chroma knowledge bank checked against their commit points, a Chroma index torn as by a kill rebuilt
and reported, a sound store reported sound, unknown names refused with exit code 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kb
from tests.support.kill_worker import batch_records

KB_BIN = Path(sys.executable).parent / "kb"


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KB_URL", "KB_API_KEY")}
    return subprocess.run([str(KB_BIN), *args, "--home", str(home)], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)


def _fill(home: Path) -> Path:
    """A FAISS and a Chroma knowledge bank of 1,500 records (past Chroma's sync threshold); the Chroma folder."""
    client = kb.api_client(home=home)
    try:
        project = client.get_project("DEFAULT")
        folders = {}
        for name, store_type in (("flat", "FAISS"), ("chromadocs", "CHROMA")):
            core = project.create_knowledge_bank(name, vector_store_type=store_type).as_core_knowledge_bank()
            for batch in range(5):
                with core.driver.begin() as tx:
                    tx.upsert(batch_records(batch))
            folders[name] = core.folder
        return folders["chromadocs"]
    finally:
        client.close()


def test_doctor_and_repair_on_an_embedded_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    chroma_folder = _fill(home)

    sound = run(home, "doctor", "--json")
    assert sound.returncode == 0, sound.stderr
    reports = {r["name"]: r for r in json.loads(sound.stdout)}
    assert set(reports) == {"flat", "chromadocs"}
    for report in reports.values():
        assert report["ok"] and report["records"] == 1500 and report["checked"]["readable"] == 1500
        assert report["checked"]["found_by_own_vector"] == report["checked"]["vector_probes"] == 32

    segment = next(p for p in (chroma_folder / "chroma-store" / "chroma").iterdir() if p.is_dir())
    (segment / "index_metadata.pickle").write_bytes(b"\x80\x04")  # torn, as by a kill while Chroma wrote it
    checked = run(home, "doctor", "chromadocs", "--full")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "chromadocs" in checked.stdout and ": ok; 1500 committed records" in checked.stdout
    assert "rebuilt the Chroma collection from kb's copy (1500 records) on open" in checked.stdout
    assert "found by own vector 1500" in checked.stdout
    assert "rebuilding its Chroma collection" in checked.stderr  # the log says it too

    repaired = run(home, "repair", "flat", "chromadocs")
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.count(": ok;") == 2

    missing = run(home, "doctor", "nosuchkb")
    assert missing.returncode == 3 and "nosuchkb" in missing.stderr


def test_check_and_repair_on_azure_ai_search(tmp_path: Path) -> None:
    """The generic check through the driver protocol, on the Azure AI Search emulator: sound, then a document
    lost outside kb (deleted in the service) found missing; repair says it cannot rebuild such a store."""
    from stores.azure_search.store import AzureSearchStore
    from stores.azure_search.view import physical_key
    from stores.base import StoreContext
    from tests.support.azure_search_emulator import AzureSearchEmulator

    emulator = AzureSearchEmulator(tmp_path / "emulator").start()
    try:
        connection = {"endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "d-",
                      "api_version": "2024-07-01", "retry_backoff_factor": 0.05}
        store = AzureSearchStore(StoreContext("azdoc", tmp_path / "kb", connection=connection))
        with store.begin() as tx:
            tx.upsert(batch_records(0))
        report = store.check(full=True)
        assert report.ok and report.checked["readable"] == 300 and report.checked["found_by_own_vector"] == 300
        store.service.documents.delete_documents([{"key": physical_key(1, "b0-7")}])  # lost outside kb
        damaged = store.repair()
        assert damaged.problems == ["the store counts 299 records, the commit point lists 300",
                                    "1 committed records cannot be read from the store: 'b0-7'"]
        assert "kb cannot rebuild a store of type AZURE_AI_SEARCH" in damaged.repaired[0]
        store.close()
    finally:
        emulator.stop()
