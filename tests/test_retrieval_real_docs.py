"""Retrieval on a real documentation set: questions as users type them about the PostgreSQL 15 manual (Debian
``postgresql-doc-15``, read in place), each with the page that answers it. ``kb sync`` of a bounded set of
pages (the answers and their neighbours: other configuration chapters, other SQL commands), then hybrid search
with the real model must put the answering page in the top 5 for at least 90% of them.

The questions name things exactly where users do (``max_wal_size``, ``ON CONFLICT``, ``pg_basebackup``) and
describe them in their own words elsewhere ("how do I ..."); none was tuned against the results. Measured
(issue 36): every answer in the top 5 with or without ``embed_context`` (title and section path embedded with
each chunk), 27 of 30 first either way; so it stays off by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import kb
from tests.support.real_corpora import DOCBOOK, Family, require

pytestmark = pytest.mark.slow  # the local all-MiniLM-L6-v2 model embeds the pages

QUESTIONS: list[tuple[str, str]] = [
    ("log every statement that runs longer than a given time", "runtime-config-logging.html"),
    ("what does shared_buffers control", "runtime-config-resource.html"),
    ("memory used by sorts and hash tables before writing to temporary files", "runtime-config-resource.html"),
    ("max_wal_size", "runtime-config-wal.html"),
    ("how often are automatic checkpoints taken (checkpoint_timeout)", "runtime-config-wal.html"),
    ("maximum number of concurrent client connections", "runtime-config-connection.html"),
    ("which IP addresses does the server listen on", "runtime-config-connection.html"),
    ("abort any statement that takes more than a specified amount of time", "runtime-config-client.html"),
    ("random_page_cost", "runtime-config-query.html"),
    ("autovacuum_vacuum_scale_factor", "runtime-config-autovacuum.html"),
    ("create a table only if it does not already exist", "sql-createtable.html"),
    ("build an index without locking out writes on the table", "sql-createindex.html"),
    ("how do I add a column to an existing table", "sql-altertable.html"),
    ("insert a row or update it when it already exists ON CONFLICT DO UPDATE", "sql-insert.html"),
    ("empty a table quickly and restart its identity sequences", "sql-truncate.html"),
    ("VACUUM FULL give disk space back to the operating system", "sql-vacuum.html"),
    ("show actual run times of each plan node EXPLAIN ANALYZE", "sql-explain.html"),
    ("load data from a CSV file into a table", "sql-copy.html"),
    ("give a user permission to SELECT from a table", "sql-grant.html"),
    ("refresh a materialized view without blocking reads", "sql-refreshmaterializedview.html"),
    ("pg_hba.conf authentication methods for client connections", "auth-pg-hba-conf.html"),
    ("which transaction isolation levels are there and what anomalies do they prevent", "transaction-iso.html"),
    ("row_number rank and dense_rank window functions", "functions-window.html"),
    ("jsonb containment operator @> and existence", "datatype-json.html"),
    ("take a base backup of a running cluster with pg_basebackup", "app-pgbasebackup.html"),
    ("dump a single database to a script or archive file", "app-pgdump.html"),
    ("foreign key that deletes referencing rows ON DELETE CASCADE", "ddl-constraints.html"),
    ("split a large table into partitions by range", "ddl-partitioning.html"),
    ("what index types does PostgreSQL provide btree hash gist gin brin", "indexes-types.html"),
    ("nextval currval setval sequence functions", "functions-sequence.html"),
]

# the answers' neighbours: pages a wrong answer would come from (same chapter or same kind of page)
NEIGHBOURS = [
    "runtime-config-replication.html", "runtime-config-error-handling.html", "runtime-config-locks.html",
    "runtime-config-statistics.html", "runtime-config-file-locations.html", "sql-createview.html",
    "sql-creatematerializedview.html", "sql-dropindex.html", "sql-reindex.html", "sql-update.html",
    "sql-delete.html", "sql-analyze.html", "sql-revoke.html", "sql-createrole.html", "sql-lock.html",
    "app-pgrestore.html", "app-pg-dumpall.html", "ddl-alter.html", "ddl-default.html", "indexes-multicolumn.html",
    "functions-math.html", "datatype-numeric.html",
    "mvcc-intro.html", "explicit-locking.html", "tutorial-window.html", "tutorial-join.html",
]
HIT_RATE = 0.9
TOP = 5


def pages() -> list[str]:
    return sorted({page for _, page in QUESTIONS} | set(NEIGHBOURS))


def hits(folder: Path, home: Path, embed_context: bool) -> Iterator[tuple[str, str, list[str]]]:
    """Sync ``pages()`` of ``folder`` into a fresh knowledge bank; (question, answer, top pages) per question."""
    client = kb.api_client(home=home)
    try:
        core = client.get_default_project().create_knowledge_bank("pg-docs").as_core_knowledge_bank()
        report = core.sync_folder(folder, extraction="structured", include=tuple("/" + p for p in pages()),
                                  embed_context=embed_context)
        assert report.files_total == len(pages()) and not report.failed and not report.empty, report.summary()
        for question, answer in QUESTIONS:
            results = core.search(query=question, k=TOP * 4, search_type="hybrid")
            top = list(dict.fromkeys(r.metadata["KB_SOURCE"].lstrip("/") for r in results))[:TOP]
            yield question, answer, top
    finally:
        client.close()


def test_hybrid_search_finds_the_answering_page(tmp_path: Path) -> None:
    folder = require(Family("docbook", DOCBOOK, "//body", (), "Debian package postgresql-doc-15"))
    assert len(QUESTIONS) >= 25 and all((folder / page).is_file() for page in pages())
    results = list(hits(folder, tmp_path / "home", embed_context=False))  # the default: it did as well
    missed = [(q, answer, top) for q, answer, top in results if answer not in top]
    rate = 1 - len(missed) / len(results)
    assert rate >= HIT_RATE, f"{rate:.0%} of the answers in the top {TOP}; missed: {missed}"
