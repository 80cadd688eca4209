"""Folder sync and row ingestion on a real Ray cluster (a head and a second node, separate processes and CPUs):
the same knowledge bank as the one-machine sync (FAISS and a real Elasticsearch node), a worker killed mid-job,
the driver killed and the sync re-run, row ingestion, a REST sync job on the service's configured cluster.

One cluster for the module (starting one costs tens of seconds on a shared 2-core machine), torn down after.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import kb
from kb.core import CoreKnowledgeBank
from kb.lookup import find_knowledge_bank
from tests.support.document_files import NESTED_MARKDOWN, NOISY_HTML, corrupt_pdf, guide_docx, manual_pdf
from tests.support.kb_serve import connect_stub_model
from tests.support.openai_embeddings_server import EmbeddingsServer
from tests.support.ray_cluster import ROOT, RayCluster, cluster_env
from tests.support.server import ADMIN_KEY, KBServer
from writers.chunking import HASH_KEY
from writers.sync import SyncOptions, SyncReport, sync_folder

ray = pytest.importorskip("ray")  # kb[ray] is locked on main: a skip here means a broken install

TIMING_FIELDS = {"seconds"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    started = RayCluster(node_cpus=(1, 1), object_store_bytes=300 * 2**20).start()
    try:
        yield started
    finally:
        ray.shutdown()
        started.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def engine_on(cluster: RayCluster, **overrides: Any) -> kb.RayEngine:
    # two 1-CPU nodes: two half-CPU actors leave room for half-CPU extraction tasks
    settings: dict[str, Any] = {"embed_actors": 2, "embed_cpus": 0.5, "extract_cpus": 0.5, **overrides}
    return kb.RayEngine(address=cluster.address, **settings)


def mixed_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "manuals").mkdir()
    manual_pdf(root / "manuals" / "manual.pdf")
    guide_docx(root / "guide.docx")
    (root / "web").mkdir()
    (root / "web" / "help.html").write_text(NOISY_HTML)
    (root / "cookbook.md").write_text(NESTED_MARKDOWN)
    corrupt_pdf(root / "broken.pdf")
    (root / "web" / "moved.html").write_text(  # readable, nothing to index: reported empty, not failed
        '<html><head><meta http-equiv="refresh" content="0; url=help.html"></head><body></body></html>')
    for n in range(4):
        (root / f"notes-{n}.md").write_text(f"# Notes {n}\n\n" + "\n\n".join(
            f"Note {n}.{p}: relay {n * 100 + p} closes when the pressure passes {p} bar." for p in range(12)))
    return root


def records_of(core: CoreKnowledgeBank) -> dict[str, tuple[str, dict[str, Any], np.ndarray]]:
    """Every chunk, with this knowledge bank's id in screenshot paths replaced (it names the folder they are in;
    the content hash of such a chunk digests it too, so that one is left out)."""
    out = {}
    for batch in core.driver.iter_records(with_vectors=True):
        for record in batch:
            raw = json.dumps(record.metadata)
            metadata = json.loads(raw.replace(core.id, "<kb>"))
            if core.id in raw:
                metadata.pop(HASH_KEY)
            out[record.id] = (record.text, metadata, np.asarray(record.vector))
    return out


def comparable(report: SyncReport) -> dict[str, Any]:
    return {k: v for k, v in report.to_dict().items() if k not in TIMING_FIELDS}


def assert_same_bank(ray_core: CoreKnowledgeBank, local_core: CoreKnowledgeBank) -> None:
    ours, theirs = records_of(ray_core), records_of(local_core)
    assert sorted(ours) == sorted(theirs) and ours
    for chunk_id, (text, metadata, vector) in theirs.items():
        assert ours[chunk_id][0] == text
        assert ours[chunk_id][1] == metadata
        # the same model on the same text; not bit for bit: an actor runs onnxruntime on its own thread count
        # and batch shapes, which changes float summation order (CI saw differences of 1e-8)
        assert np.allclose(ours[chunk_id][2], vector, rtol=0, atol=1e-6), chunk_id


def test_a_sync_on_ray_makes_the_knowledge_bank_the_local_sync_makes(cluster: RayCluster, tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "docs")
    client = kb.api_client(home=tmp_path / "home")
    project = client.get_default_project()
    on_ray = project.create_knowledge_bank("on-ray").as_core_knowledge_bank()
    local = project.create_knowledge_bank("local").as_core_knowledge_bank()
    options = {"extraction": "structured", "screenshots": True, "chunk_size": 300, "chunk_overlap": 30}

    ray_report = on_ray.sync_folder(folder, engine=engine_on(cluster), **options)
    local_report = local.sync_folder(folder, **options)

    assert comparable(ray_report) == comparable(local_report)
    assert [f["path"] for f in ray_report.failed] == ["/broken.pdf"] and "PDF" in ray_report.failed[0]["reason"]
    assert [f["path"] for f in ray_report.empty] == ["/web/moved.html"] and "/web/moved.html" not in ray_report.added
    assert ray_report.screenshots_written >= 4 and ray_report.chunks_written > 20
    assert_same_bank(on_ray, local)
    for name in (tmp_path / "home").rglob("page-0001.png"):  # the driver wrote the PNGs the workers rendered
        assert name.stat().st_size > 1000

    # an edited, a removed and untouched files: only the edited text is embedded again (every chunk of the
    # edited file is rewritten, its file hash changed: the unchanged texts take their stored vectors)
    notes = folder / "notes-1.md"
    notes.write_text(notes.read_text().replace("Note 1.11: relay 111 closes", "Note 1.11: relay 111 opens!"))
    (folder / "notes-2.md").unlink()
    ray_report = on_ray.sync_folder(folder, engine=engine_on(cluster), **options)
    local_report = local.sync_folder(folder, **options)
    assert comparable(ray_report) == comparable(local_report)
    assert ray_report.updated == ["/notes-1.md"] and ray_report.removed == ["/notes-2.md"]
    assert ray_report.texts_embedded == 1 < ray_report.chunks_written  # every chunk digests the file hash
    assert_same_bank(on_ray, local)

    # a rewrite that changes the file's chunk count rewrites all its chunks: the unchanged texts take their
    # stored vectors (locally: from the embedding cache); only the new text is embedded
    notes.write_text(notes.read_text() + "\n\nNote 1.99: a late addition about valve 7.")
    ray_report = on_ray.sync_folder(folder, engine=engine_on(cluster), **options)
    local_report = local.sync_folder(folder, **options)
    assert comparable(ray_report) == comparable(local_report)
    assert ray_report.embedding_cache_hits > 0 and ray_report.texts_embedded < ray_report.chunks_written
    assert_same_bank(on_ray, local)
    client.close()


def test_a_worker_killed_mid_job_costs_a_retry_not_a_file(cluster: RayCluster, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(30):
        (folder / f"part-{n:02d}.md").write_text(f"# Part {n}\n\n" + "\n\n".join(
            f"Part {n} line {p}: gasket {n}-{p} fits the flange of pump {p + n}." for p in range(10)))
    client = kb.api_client(home=tmp_path / "home")
    project = client.get_default_project()
    on_ray = project.create_knowledge_bank("on-ray").as_core_knowledge_bank()
    killed: list[int] = []
    at_kill: list[int] = []

    def kill_workers(report: SyncReport) -> None:
        if report.commits == 1 and not killed:
            at_kill.append(report.files_processed)
            for title in ("EmbedFiles", "extract_files"):  # the embedding actors, any extraction task running
                for pid in cluster.processes(title):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    options = SyncOptions(chunk_size=200, chunk_overlap=20, batch_files=2)
    engine = engine_on(cluster, files_per_task=1, files_per_embed_batch=1)
    report = sync_folder(on_ray, folder, options, on_progress=kill_workers, engine=engine)

    assert killed and at_kill[0] < 30, "the kill must land while files are still in flight"
    assert report.failed == [] and len(report.added) == 30 and sorted(report.added) == report.added
    local = project.create_knowledge_bank("local").as_core_knowledge_bank()
    local_report = sync_folder(local, folder, options)
    assert report.chunks_written == local_report.chunks_written == on_ray.driver.count()
    assert_same_bank(on_ray, local)
    client.close()


def _committed_files(home: Path) -> int:
    found = list(home.rglob("sync.sqlite"))
    if not found:
        return 0
    try:
        with sqlite3.connect(f"file:{found[0]}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM synced_files").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_the_driver_killed_then_rerun_embeds_nothing_it_committed(cluster: RayCluster, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(24):
        (folder / f"memo-{n:02d}.md").write_text(f"# Memo {n}\n\n" + "\n\n".join(
            f"Memo {n} item {p}: order {n * 31 + p} ships from dock {p}." for p in range(8)))
    home = tmp_path / "home"
    embeddings = EmbeddingsServer().start()  # counts every text it embeds, whichever process asks
    try:
        model = connect_stub_model(home, embeddings)
        client = kb.api_client(home=home)
        core = client.get_default_project().create_knowledge_bank("memos", embedding_llm_id=model) \
            .as_core_knowledge_bank()
        command = [sys.executable, "-m", "api.cli", "sync", str(folder), "--kb", "memos", "--home", str(home),
                   "--ray", cluster.address, "--chunk-size", "200", "--chunk-overlap", "20", "--batch-files", "2",
                   "--quiet"]
        driver = subprocess.Popen(command, env=cluster_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _committed_files(home) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
        committed = core.driver.count()
        assert 0 < committed and _committed_files(home) < 24, "the kill must land mid-job"
        embeddings.script()  # resets the count

        rerun = subprocess.run([*command, "--report", str(tmp_path / "report.json")], env=cluster_env(), cwd=ROOT,
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        report = json.loads((tmp_path / "report.json").read_text())
        total = core.driver.count()
        assert embeddings.stats()["inputs"] == report["texts_embedded"] == total - committed
        assert len(report["added"]) + len(report["unchanged"]) == 24 and report["failed"] == []
        ids = [r.id for batch in core.driver.iter_records() for r in batch]
        assert len(ids) == len(set(ids)) == total > 24
        client.close()
    finally:
        embeddings.stop()


def test_row_ingestion_on_ray_writes_what_the_local_ingestion_writes(cluster: RayCluster, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"id": f"r{n}", "text": f"Row {n}: sensor {n % 7} read {n * 1.5} kPa. "
                                                                 * (1 + n % 5), "site": f"plant-{n % 3}"})
                              for n in range(60)) + "\n" + '{"id": "bad"}\n')
    home = tmp_path / "home"
    client = kb.api_client(home=home)
    project = client.get_default_project()
    project.create_knowledge_bank("local")
    project.create_knowledge_bank("on-ray")
    from api.cli_ingest import main

    common = [str(rows), "--home", str(home), "--id-column", "id", "--chunk-size", "100", "--chunk-overlap", "10",
              "--commit-every", "50", "--quiet"]
    assert main([*common, "--kb", "on-ray", "--ray", cluster.address, "--report", str(tmp_path / "r.json")]) == 1
    assert main([*common, "--kb", "local", "--report", str(tmp_path / "l.json")]) == 1
    on_ray, local = (json.loads((tmp_path / name).read_text()) for name in ("r.json", "l.json"))
    for report in (on_ray, local):
        for name in ("seconds", "rows_per_second", "chunks_per_second"):
            report.pop(name)
    assert on_ray == local and on_ray["rows_rejected"] == 1 and on_ray["chunks_written"] > 60
    assert_same_bank(find_knowledge_bank(project, "on-ray").as_core_knowledge_bank(),
                     find_knowledge_bank(project, "local").as_core_knowledge_bank())
    client.close()


def test_a_rest_sync_job_runs_on_the_cluster_the_service_is_configured_with(cluster: RayCluster,
                                                                          tmp_path: Path) -> None:
    server = KBServer(tmp_path / "home", env={**cluster_env(), "KB_RAY_ADDRESS": cluster.address}).start()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            return httpx.request(method, f"{server.url}/v1/projects/DEFAULT{path}", headers=headers, timeout=60,
                                 **kwargs)

        folder = call("POST", "/folders", json={"name": "notes"}).json()["id"]
        for n in range(3):
            call("PUT", f"/folders/{folder}/files/note-{n}.md", content=f"# Note {n}\n\nValve {n} is shut.".encode())
        call("PUT", f"/folders/{folder}/files/broken.pdf", content=corrupt_pdf(tmp_path / "b.pdf").read_bytes())
        kb_id = call("POST", "/knowledge-banks", json={"name": "notes-kb", "embedding_llm_id": "custom:fake6"}
                     ).json()["id"]
        # a request cannot pick the engine: the body is checked, an unknown field is a 422
        refused = call("POST", f"/knowledge-banks/{kb_id}/sync-jobs", json={"folder_id": folder, "ray": "auto"})
        assert refused.status_code == 422
        job = call("POST", f"/knowledge-banks/{kb_id}/sync-jobs", json={"folder_id": folder}).json()
        assert job["engine"] == "ray"
        deadline = time.monotonic() + 300
        while job["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            job = call("GET", f"/knowledge-banks/{kb_id}/sync-jobs/{job['job_id']}").json()
        assert job["state"] == "succeeded", job
        assert sorted(job["report"]["added"]) == ["/note-0.md", "/note-1.md", "/note-2.md"]
        assert [f["path"] for f in job["report"]["failed"]] == ["/broken.pdf"]
        assert job["progress"]["files_processed"] == job["progress"]["files_to_process"] == 4
    finally:
        server.stop()


def test_a_sync_on_ray_into_elasticsearch_equals_the_local_sync(cluster: RayCluster, tmp_path: Path) -> None:
    """Store-backed knowledge banks take the same path: the vectors come back to the driver's writer."""
    from tests.support.elasticsearch_server import ElasticsearchNode

    node = ElasticsearchNode(name="ray-sync").start()
    try:
        folder = mixed_folder(tmp_path / "docs")
        client = kb.api_client(home=tmp_path / "home")
        client.create_connection("es", "elasticsearch", {"url": node.url, "index_prefix": "ray-"})
        project = client.get_default_project()
        cores = [project.create_knowledge_bank(name, vector_store_type="ELASTICSEARCH",
                                               settings={"connection": "es"}).as_core_knowledge_bank()
                 for name in ("on-ray", "local")]
        options = {"extraction": "structured", "chunk_size": 300, "chunk_overlap": 30}
        ray_report = cores[0].sync_folder(folder, engine=engine_on(cluster), **options)
        local_report = cores[1].sync_folder(folder, **options)
        assert comparable(ray_report) == comparable(local_report) and ray_report.chunks_written > 20
        assert_same_bank(cores[0], cores[1])
        client.close()
    finally:
        node.cleanup()
