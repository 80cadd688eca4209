"""Batch ingestion: every format, chunking, idempotence, bad rows, and a crash in the middle of 10k rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import kb
from tests.conftest import FAKE_MODEL_ID
from writers.ingest import HASH_KEY, ROW_KEY, IngestOptions, ingest, main

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"id": f"r{i}", "text": f"Row {i}. " + "Knowledge banks keep chunks of text. " * (i % 5 + 1),
         "lang": "en" if i % 2 else "fr", "year": 2000 + i} for i in range(40)]


def _write(path: Path, rows: list[dict]) -> Path:
    table = pa.Table.from_pylist(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=7)
    elif path.suffix == ".arrow":
        with ipc.new_file(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=9)
    elif path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _core(client: kb.EmbeddedClient, name: str = "ingest", **settings: object) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    return client.get_default_project().create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID,
                                                              settings=dict(settings)).as_core_knowledge_bank()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".arrow"])
def test_every_format_streams_chunks_and_metadata(client: kb.EmbeddedClient, tmp_path: Path, suffix: str) -> None:
    core = _core(client)
    path = _write(tmp_path / f"rows{suffix}", ROWS)
    report = ingest(core, path, IngestOptions(id_column="id", chunk_size=80, chunk_overlap=10, batch_rows=5),
                    progress=False)
    assert report.rows_read == 40 and report.rows_written == 40 and report.rows_rejected == 0
    assert core.count() == report.chunks_written > 40  # long rows were split
    chunk = core.get_documents(["r9#1"])[0]
    assert chunk.metadata["source"] == path.name and chunk.metadata["start_index"] > 0
    assert chunk.metadata["lang"] == "en" and chunk.metadata[ROW_KEY] == "r9" and HASH_KEY in chunk.metadata
    assert chunk.metadata["year"] == 2009
    assert core.count({"lang": "fr"}) > 0


def test_rerun_is_idempotent_and_embeds_nothing(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client)
    path = _write(tmp_path / "rows.parquet", ROWS)
    first = ingest(core, path, IngestOptions(chunk_size=0), progress=False)
    assert first.chunks_written == 40 and first.texts_embedded == 40
    again = ingest(core, path, IngestOptions(chunk_size=0), progress=False)
    assert again.chunks_written == 0 and again.chunks_skipped == 40 and again.rows_skipped == 40
    assert again.texts_embedded == 0 and core.count() == 40


def test_a_changed_row_replaces_all_its_old_chunks(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client)
    long_row = [{"id": "x", "text": "alpha beta gamma. " * 30}]
    ingest(core, _write(tmp_path / "a.jsonl", long_row), IngestOptions(id_column="id", chunk_size=100,
                                                                       chunk_overlap=0), progress=False)
    assert core.count() > 3
    ingest(core, _write(tmp_path / "a.jsonl", [{"id": "x", "text": "short now"}]),
           IngestOptions(id_column="id", chunk_size=100, chunk_overlap=0), progress=False)
    assert [d.page_content for d in core.get_documents([f"x#{i}" for i in range(10)])] == ["short now"]
    assert core.count() == 1


def test_bad_rows_are_reported_with_their_numbers(client: kb.EmbeddedClient, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    core = _core(client, metadata_schema={"year": "int", "source": "string", "start_index": "int"})
    rows = [{"text": "fine", "year": 2001}, {"text": "", "year": 2002}, {"text": "wrong year", "year": "soon"},
            {"year": 2004}, {"text": "also fine", "year": 2005}]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = ingest(core, path, IngestOptions(), progress=False)
    assert (report.rows_written, report.rows_rejected) == (2, 3)
    assert [r["row"] for r in report.rejected] == [2, 3, 4]
    assert "year" in report.rejected[1]["reason"] and "text" in report.rejected[0]["reason"]
    assert core.count() == 2
    with pytest.raises(kb.InvalidInputError, match="more than 1 rows rejected"):
        ingest(_core(client, "strict"), path, IngestOptions(max_rejected=1), progress=False)


def test_cli_exit_status_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    client = kb.api_client(home=home)
    core = client.get_default_project().create_knowledge_bank("cli").as_core_knowledge_bank()
    rows = tmp_path / "rows.csv"
    _write(rows, [{"text": "", "n": 1}])  # one bad row only: nothing reaches the model
    assert main([str(rows), "--kb", core.id, "--home", str(home)]) == 1
    out = capsys.readouterr()
    assert "1 rejected" in out.out and "rejected row 1" in out.err
    assert main([str(tmp_path / "missing.csv"), "--kb", core.id, "--home", str(home)]) == 2
    assert main([str(rows), "--kb", "nope", "--home", str(home)]) == 2


def test_ten_thousand_rows_crash_in_the_middle_then_rerun(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client, "big")
    rows = [{"id": f"row{i}", "text": f"Document {i}: " + f"some text about topic {i % 97}. " * 8,
             "group": i % 10} for i in range(10_000)]
    path = _write(tmp_path / "big.parquet", rows)
    worker = [sys.executable, "-m", "tests.support.ingest_worker", str(client.home), core.id, str(path)]
    crashed = subprocess.run(worker, cwd=ROOT, capture_output=True, text=True,
                             env={**__import__("os").environ, "KB_INGEST_CRASH_AFTER_COMMITS": "2"})
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    after_crash = core.count()
    assert 0 < after_crash < 20_000  # two whole commits landed, nothing after them
    finished = subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    total = core.count()
    assert report["chunks_skipped"] == after_crash  # the committed part was not re-written ...
    assert report["texts_embedded"] <= total - after_crash  # ... nor re-embedded
    assert report["chunks_written"] == total - after_crash
    ids = core.driver.ids_where(None)
    assert len(ids) == len(set(ids)) == total  # no duplicates
    assert {i.split("#")[0] for i in ids} == {f"row{i}" for i in range(10_000)}
    rerun = subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["chunks_written"] == 0
    assert core.search(query="Document 42: some text", k=1, search_type="keyword")
