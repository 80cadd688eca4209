"""Batch ingestion: every format, chunking, idempotence, bad rows, the CLI, and a crash in the middle of 10k rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kb
from api.cli_ingest import main
from kb.core import CoreKnowledgeBank
from kb.embeddings import LOCAL_MINILM_ID
from kb_base.errors import SchemaError
from kb_base.filters import parse_filter
from tests.conftest import FAKE_MODEL_ID
from writers.ingest import (
    CHUNKS_KEY,
    ROW_KEY,
    IngestOptions,
    TooManyRejectedError,
    ingest,
    make_splitter,
    split_chunks,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "ingest"
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


def _core(client: kb.EmbeddedClient, name: str = "ingest", **settings: object) -> CoreKnowledgeBank:
    return client.get_default_project().create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID,
                                                              settings=dict(settings)).as_core_knowledge_bank()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".arrow"])
def test_every_format_streams_chunks_and_metadata(client: kb.EmbeddedClient, tmp_path: Path, suffix: str) -> None:
    core = _core(client)
    path = _write(tmp_path / f"rows{suffix}", ROWS)
    per_commit: list[int] = []
    report = ingest(core, path, IngestOptions(id_column="id", chunk_size=80, chunk_overlap=10, batch_rows=5,
                                              commit_every=20),
                    progress=False, on_commit=lambda r: per_commit.append(r.chunks_written - sum(per_commit)))
    assert (report.rows_read, report.rows_written, report.rows_rejected) == (40, 40, 0)
    assert core.count() == report.chunks_written == sum(per_commit) > 40  # long rows were split
    # bounded: a commit holds at most commit_every chunks plus one batch of rows (5 rows, ≤ 4 chunks each)
    assert len(per_commit) > 3 and max(per_commit) < 20 + 5 * 4
    chunk = core.get_documents(["r9#1"])[0]
    text = ROWS[9]["text"]
    start = chunk.metadata["start_index"]
    assert start > 0 and text[start:start + len(chunk.page_content)] == chunk.page_content
    assert chunk.metadata["source"] == path.name and chunk.metadata[ROW_KEY] == "r9"
    assert chunk.metadata["lang"] == "en" and chunk.metadata["year"] == 2009  # typed, CSV included
    assert chunk.metadata[CHUNKS_KEY] == len(core.driver.ids_where(parse_filter({ROW_KEY: "r9"})))
    assert core.count({"lang": "fr"}) > 0


def test_csv_values_follow_the_schema_and_bad_rows_are_numbered(client: kb.EmbeddedClient) -> None:
    core = _core(client, metadata_schema={"year": "int", "reviewed": "bool", "topic": "string",
                                          "source": "string", "start_index": "int"})
    report = ingest(core, FIXTURES / "faq.csv", IngestOptions(text_column="answer", id_column="id", chunk_size=0),
                    progress=False)
    assert (report.rows_read, report.rows_written, report.rows_rejected) == (7, 4, 3)
    rejected = {r["row"]: r["reason"] for r in report.rejected}
    assert "'year'" in rejected[4] and "soon" in rejected[4]  # faq-4
    assert "'answer'" in rejected[5]  # faq-5: no answer
    assert "malformed CSV row" in rejected[None] and "faq-6" in rejected[None]  # one field too many
    assert report.columns["metadata"] == ["year", "reviewed", "topic"]  # the schema's columns only
    two, seven = core.get_documents(["faq-2#0", "faq-7#0"])
    assert two.metadata["year"] == 2022 and two.metadata["reviewed"] is False and "question" not in two.metadata
    assert "\nChunks overlap" in two.page_content and "日本語" in seven.page_content
    assert core.count({"topic": "basics"}) == 2


def test_jsonl_rows_are_numbered_by_line(client: kb.EmbeddedClient) -> None:
    core = _core(client, metadata_schema={"lang": "string", "rating": "int"})  # no source/start_index keys
    report = ingest(core, FIXTURES / "notes.jsonl", IngestOptions(id_column="id"), progress=False)
    assert (report.rows_read, report.rows_written, report.rows_rejected) == (7, 3, 4)
    reasons = {r["row"]: r["reason"] for r in report.rejected}
    assert sorted(reasons) == [4, 5, 6, 7]  # line numbers; line 3 is blank
    assert "'rating'" in reasons[4] and "valid JSON" in reasons[5] and "list" in reasons[6] and "'text'" in reasons[7]
    note = core.get_documents(["n7#0"])[0]
    assert note.metadata["KB_SOURCE"] == "notes.jsonl" and note.metadata["KB_START_INDEX"] == 0
    assert "source" not in note.metadata and note.metadata["rating"] == 2


def test_rerun_is_idempotent_and_embeds_nothing(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client)
    path = _write(tmp_path / "rows.parquet", ROWS)
    first = ingest(core, path, IngestOptions(chunk_size=0), progress=False)  # ids derived from source + text
    assert first.chunks_written == 40 and first.texts_embedded == 40
    again = ingest(core, path, IngestOptions(chunk_size=0), progress=False)
    assert (again.chunks_written, again.chunks_skipped, again.rows_skipped, again.commits) == (0, 40, 40, 0)
    assert again.texts_embedded == again.embedding_cache_hits == 0  # nothing even reached the embedder
    assert core.count() == 40 and again.exit_status == 0


def test_changed_rows_rewrite_only_what_changed(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client)
    options = IngestOptions(id_column="id", chunk_size=100, chunk_overlap=0)
    sentences = [f"Sentence number {i} is about topic {i}." for i in range(20)]
    path = tmp_path / "a.jsonl"
    ingest(core, _write(path, [{"id": "x", "text": " ".join(sentences)}]), options, progress=False)
    count = core.count()
    assert count > 4
    sentences[-1] = "The last sentence changed."  # same number of chunks, only the last one differs
    report = ingest(core, _write(path, [{"id": "x", "text": " ".join(sentences)}]), options, progress=False)
    assert (report.chunks_written, report.chunks_skipped) == (1, count - 1) and core.count() == count
    report = ingest(core, _write(path, [{"id": "x", "text": " ".join(sentences[:3])}]), options, progress=False)
    assert core.count() == report.chunks_written == 2 and report.chunks_removed == count - 2
    assert [d.id for d in core.get_documents([f"x#{i}" for i in range(count)])] == ["x#0", "x#1"]


def test_same_id_twice_and_identical_rows(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client)
    rows = [{"id": "a", "text": "first version"}, {"id": "b", "text": "other"}, {"id": "a", "text": "second version"}]
    report = ingest(core, _write(tmp_path / "d.jsonl", rows), IngestOptions(id_column="id"), progress=False)
    assert (report.rows_written, report.rows_skipped, report.rows_duplicate) == (2, 1, 1)
    assert core.get_documents(["a#0"])[0].page_content == "second version" and core.count() == 2
    same = [{"text": "identical"}, {"text": "identical"}, {"text": "different"}]
    report = ingest(_core(client, "derived"), _write(tmp_path / "s.csv", same), progress=False)
    assert (report.rows_written, report.rows_duplicate, report.chunks_written) == (2, 1, 2)


def test_bad_input_is_a_typed_error_naming_it(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client, metadata_schema={"lang": "string"})
    rows = _write(tmp_path / "rows.parquet", ROWS)
    with pytest.raises(kb.InvalidInputError, match=r"no column 'body'; its columns: id, text, lang, year"):
        ingest(core, rows, IngestOptions(text_column="body"), progress=False)
    with pytest.raises(kb.InvalidInputError, match="text column 'year' holds int64"):
        ingest(core, rows, IngestOptions(text_column="year"), progress=False)
    with pytest.raises(SchemaError, match=r"\['year'\] are not in the knowledge bank's metadata schema"):
        ingest(core, rows, IngestOptions(metadata_columns=["lang", "year"]), progress=False)
    with pytest.raises(kb.InvalidInputError, match="chunk_overlap"):
        ingest(core, rows, IngestOptions(chunk_size=100, chunk_overlap=100), progress=False)
    with pytest.raises(kb.InvalidInputError, match="unknown ingestion options: chunk"):
        IngestOptions.from_mapping({"chunk": 5})
    with pytest.raises(kb.InvalidInputError, match="cannot tell the format of 'rows.txt'"):
        ingest(core, tmp_path / "rows.txt", progress=False)
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(kb.InvalidInputError, match="cannot read fake.parquet as parquet"):
        ingest(core, tmp_path / "fake.parquet", progress=False)
    assert core.count() == 0


def test_kb_own_columns_pass_under_a_schema(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    """KB_ keys (here retrieval-content images) are valid under any schema, so they can be metadata columns."""
    core = _core(client, "kb-columns", metadata_schema={"lang": "string"})
    images = json.dumps({"type": "images", "content": ["/page1.png"]})
    rows = _write(tmp_path / "rows.jsonl", [{"id": "a", "text": "alpha", "lang": "en", "KB_MULTIMODAL_CONTENT": images},
                                            {"id": "b", "text": "beta", "lang": "fr"}])
    report = ingest(core, rows, IngestOptions(id_column="id", metadata_columns=["lang", "KB_MULTIMODAL_CONTENT"]),
                    progress=False)
    assert report.rows_written == 2 and report.rows_rejected == 0
    by_id = {d.id: d for d in core.get_documents(["a#0", "b#0"])}
    assert by_id["a#0"].metadata["KB_MULTIMODAL_CONTENT"] == images and by_id["b#0"].metadata["lang"] == "fr"
    with pytest.raises(SchemaError, match=r"\['KBX'\] are not in"):  # only the reserved prefix passes
        ingest(core, rows, IngestOptions(metadata_columns=["lang", "KBX"]), progress=False)


def test_max_rejected_stops_and_keeps_the_report(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": ""}, {"other": 1}, {"text": "late"}])
    with pytest.raises(TooManyRejectedError, match="more than 1 rows rejected.*row 3") as caught:
        ingest(_core(client), path, IngestOptions(max_rejected=1), progress=False)
    assert (caught.value.report.rows_read, caught.value.report.rows_rejected) == (3, 2)


def test_cli_exit_status_summary_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    client = kb.api_client(home=home)
    kb_id = client.get_default_project().create_knowledge_bank("cli").id  # the local model, served from the cache
    texts = ["Knowledge banks hold chunks.", "Ingestion is idempotent."]
    client.embedding_cache.put_many(LOCAL_MINILM_ID, texts, np.eye(2, 384, dtype=np.float32))
    good = _write(tmp_path / "good.csv", [{"text": t, "n": i} for i, t in enumerate(texts)])
    args = ["--kb", kb_id, "--home", str(home), "--quiet"]
    assert main([str(good), *args, "--report", str(tmp_path / "r.json")]) == 0
    assert "2 rows: 2 written, 0 skipped (unchanged), 0 rejected" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["texts_embedded"] == 0  # the model never ran
    assert main([str(good), *args]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.csv", [{"text": "", "n": 1}, {"text": texts[0], "n": 0}])
    assert main([str(bad), *args]) == 1
    out = capsys.readouterr()
    assert "1 rejected" in out.out and "rejected: row 1: text column 'text' is missing or empty" in out.err
    assert main([str(bad), *args, "--max-rejected", "0"]) == 2
    assert main([str(tmp_path / "missing.csv"), *args]) == 2
    assert main([str(good), "--kb", "nope", "--home", str(home)]) == 2
    assert main([str(good), *args, "--chunk-size", "ten"]) == 2  # argparse usage error
    assert "does not exist" in capsys.readouterr().err
    client.close()


def test_ten_thousand_rows_crash_in_the_middle_then_rerun(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = _core(client, "big")
    rows = [{"id": f"row{i}", "text": f"Document {i}: " + f"some text about topic {i % 97}. " * 8,
             "group": i % 10} for i in range(10_000)]
    path = _write(tmp_path / "big.parquet", rows)
    worker = [sys.executable, "-m", "tests.support.ingest_worker", str(client.home), core.id, str(path)]
    crashed = subprocess.run([*worker, "2"], cwd=ROOT, capture_output=True, text=True)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    after_crash = core.count()
    assert 6000 <= after_crash < 8000  # two whole commits (3000 chunks + at most one 500-row batch) and no more
    finished = subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    total = core.count()
    assert total == 20_000 and report["rows_read"] == 10_000 and report["exit_status"] == 0  # two chunks a row
    assert report["chunks_skipped"] == after_crash and report["chunks_written"] == total - after_crash
    # the committed chunks never reached the embedder again; the rest did exactly once
    assert report["texts_embedded"] + report["embedding_cache_hits"] == total - after_crash
    ids = core.driver.ids_where(None)
    assert len(ids) == len(set(ids)) == total
    assert {i.split("#")[0] for i in ids} == {f"row{i}" for i in range(10_000)}
    rerun = json.loads(subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, check=True).stdout
                       .strip().splitlines()[-1])
    assert (rerun["chunks_written"], rerun["chunks_skipped"], rerun["texts_embedded"]) == (0, total, 0)
    hit = core.search(query="Document 4242: some text", k=1, search_type="keyword")[0]
    assert hit.id.startswith("row4242#")
    assert len(core.search(query="some text about topic 5", k=5, filter={"group": 3})) == 5



@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .\n\t\u00a0é"), max_size=60))
def test_the_short_text_shortcut_matches_the_splitter(text: str) -> None:
    splitter = make_splitter(60, 10)
    expected = [(d.page_content, d.metadata["start_index"]) for d in splitter.create_documents([text])]
    assert split_chunks(text, splitter, 60) == expected
