"""``python -m benchmarks.documents --real``: extraction on the real documentation sets this machine has.

Per corpus (Sphinx: Python 3.11 docs; DocBook: PostgreSQL 15 docs; mdBook: The Rust Programming Language and
Rust by Example from rustup's rust-docs; the PDF manuals under /usr/share/doc), read in place: files
extracted / empty / failed and pages per second for ``raw`` and ``structured`` extraction, beside the HTML
extractor kb had before (``benchmarks/documents_baseline.py``) on the same files, where it counted "no text
found" as a failure. An HTML file is one page. Then end to end: ``sync_folder`` of the PostgreSQL server
configuration chapter (``runtime-config*.html``; structured, all-MiniLM-L6-v2, empty cache) beside the bare
model embedding the same chunk texts, in alternating rounds: chunks per second, the ratio (wall clock and CPU
time) and what the sync spends outside the model. Targets: no failure on files with
visible text, raw extraction ≥ 100 pages/s, sync ≤ 1.2x the bare model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from kb_base.errors import EmptyDocumentError
from writers.extract import extract_document

PDF_ROOT = Path("/usr/share/doc")


def corpora() -> dict[str, list[Path]]:
    """The real corpora found on this machine (a missing one is left out and named in the report)."""
    found: dict[str, list[Path]] = {}
    for name, root in (("sphinx (python3.11-doc)", Path("/usr/share/doc/python3.11/html")),
                       ("docbook (postgresql-doc-15)", Path("/usr/share/doc/postgresql-doc-15/html"))):
        if root.is_dir():
            found[name] = sorted(root.rglob("*.html"))
    rustc = shutil.which("rustc")
    if rustc:
        sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=False)
        rust = Path(sysroot.stdout.strip()) / "share/doc/rust/html"
        for book in ("book", "rust-by-example"):
            if (rust / book).is_dir():
                found[f"mdbook ({book})"] = sorted((rust / book).rglob("*.html"))
    pdfs = sorted(PDF_ROOT.rglob("*.pdf"))
    if pdfs:
        found["pdf (/usr/share/doc)"] = pdfs
    return found


def _sample(files: list[Path], count: int) -> list[Path]:
    step = max(1, len(files) // count)
    return files[::step][:count]


def _run(datas: list[tuple[str, bytes]], mode: str, extract: Any) -> dict[str, Any]:
    counts = {"extracted": 0, "empty": 0, "failed": 0}
    failures: list[str] = []
    pages = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for name, data in datas:
        try:
            document = extract(name, data, mode)
        except EmptyDocumentError as exc:
            counts["empty"] += 1
            failures.append(f"empty: {name}: {exc}")
            pages += 1  # a page read all the same: the rate is over every file tried
            continue
        except Exception as exc:  # noqa: BLE001 - counted and named, the benchmark goes on
            counts["failed"] += 1
            failures.append(f"failed: {name}: {type(exc).__name__}: {exc}")
            pages += 1
            continue
        counts["extracted"] += 1
        pages += document.page_count or 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # CPU seconds too: on a shared machine the wall clock measures the neighbours as much as the extractor
    return {**counts, "pages": pages, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "pages_per_second": round(pages / seconds, 1) if seconds else None,
            "pages_per_cpu_second": round(pages / cpu, 1) if cpu else None, "examples": failures[:5]}


def _baseline(name: str, data: bytes, mode: str) -> Any:
    from benchmarks.documents_baseline import extract_html

    document = extract_html(data, mode)
    if document.text_length == 0:
        raise ValueError("no text found in this html file")  # what it raised: a failure, not empty
    return document


def time_real_extraction(per_corpus: int) -> dict[str, Any]:
    from bs4 import XMLParsedAsHTMLWarning

    warnings.filterwarnings("ignore", category=XMLParsedAsHTMLWarning)  # the old extractor read XHTML as HTML
    figures: dict[str, Any] = {}
    for name, files in corpora().items():
        chosen = files if name.startswith("pdf") else _sample(files, per_corpus)
        datas = [(str(path), path.read_bytes()) for path in chosen]
        entry: dict[str, Any] = {"files_in_corpus": len(files), "files_sampled": len(datas),
                                 "megabytes": round(sum(len(d) for _, d in datas) / 2**20, 1)}
        for mode in ("raw", "structured"):
            entry[mode] = _run(datas, mode, lambda n, d, m: extract_document(n, d, m))
            if not name.startswith("pdf"):
                entry[f"{mode}_before"] = _run(datas, mode, _baseline)
        figures[name] = entry
    return figures


def time_real_sync(home: Path, rounds: int = 3) -> dict[str, Any] | None:
    """End to end on PostgreSQL's configuration chapter beside the bare model on the same texts, in alternating
    rounds (sync then model, model then sync, ...) so that a shared machine's drifting load weighs on both.

    Each round syncs into a fresh home (an empty embedding cache) and the same loaded model embeds the chunk
    texts the sync wrote; inside the sync, the model's own calls are timed too, so the report says what the
    rest (listing, hashing, extraction, chunking, the cache, keyword postings, the store's commit, the sync
    records) costs. CPU seconds (every thread of this process) are given beside the wall clock: the load of
    other processes inflates the wall clock of both, not their CPU time."""
    import kb
    from kb.embeddings import LOCAL_MINILM_ID
    from writers.sync import SyncOptions, sync_folder

    root = Path("/usr/share/doc/postgresql-doc-15/html")
    if not root.is_dir():
        return None
    options = SyncOptions(extraction="structured", include=("/runtime-config*.html",))
    texts: list[str] | None = None
    figures: list[dict[str, Any]] = []
    for round_ in range(rounds):
        client = kb.api_client(home=home / f"round-{round_}")
        try:
            core = client.get_default_project().create_knowledge_bank(
                "bench-real", embedding_llm_id=LOCAL_MINILM_ID).as_core_knowledge_bank()
            model = core.embedder().model
            # a full batch of the longest texts: onnxruntime grows its memory arena on the first call of each
            # shape, which would otherwise land in whichever of the two comes first
            model.embed(["warm up the model before anything is timed " * 40] * 32)
            inside: list[float] = []
            plain_embed = model.embed

            def timed_embed(batch: Any, plain: Any = plain_embed, spent: list[float] = inside) -> Any:
                started = time.perf_counter()
                try:
                    return plain(batch)
                finally:
                    spent.append(time.perf_counter() - started)

            entry: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 1)}
            order = ("sync", "bare") if round_ % 2 == 0 or texts is None else ("bare", "sync")
            for step in order:
                started, cpu_started = time.perf_counter(), time.process_time()
                if step == "sync":
                    model.embed = timed_embed  # an instance attribute: this client's model only
                    report = sync_folder(core, root, options)
                    del model.embed
                    texts = [r.text for batch in core.driver.iter_records() for r in batch]
                    entry.update(files=report.files_total, chunks=report.chunks_written,
                                 model_in_sync_seconds=round(sum(inside), 2))
                else:
                    model.embed(texts)
                entry[f"{step}_seconds"] = round(time.perf_counter() - started, 2)
                entry[f"{step}_cpu_seconds"] = round(time.process_time() - cpu_started, 2)
            entry["order"] = "/".join(order)
            entry["sync_over_bare_model"] = round(entry["sync_seconds"] / entry["bare_seconds"], 3)
            figures.append(entry)
            print(f"  round {round_ + 1}/{rounds} ({entry['order']}, load {entry['load_average']}): sync "
                  f"{entry['sync_seconds']}s (model inside {entry['model_in_sync_seconds']}s), bare model "
                  f"{entry['bare_seconds']}s = {entry['sync_over_bare_model']}x", flush=True)
        finally:
            client.close()
    sync = sum(f["sync_seconds"] for f in figures)
    bare = sum(f["bare_seconds"] for f in figures)
    sync_cpu = sum(f["sync_cpu_seconds"] for f in figures)
    bare_cpu = sum(f["bare_cpu_seconds"] for f in figures)
    other = sum(f["sync_seconds"] - f["model_in_sync_seconds"] for f in figures)
    chunks = figures[0]["chunks"]
    return {"files": figures[0]["files"], "chunks": chunks, "rounds": figures,
            "sync_seconds": round(sync / rounds, 2), "bare_model_seconds": round(bare / rounds, 2),
            "chunks_per_second": round(chunks * rounds / sync, 1),
            "bare_model_chunks_per_second": round(chunks * rounds / bare, 1),
            "sync_over_bare_model": round(sync / bare, 3),
            "sync_over_bare_model_cpu": round(sync_cpu / bare_cpu, 3),
            "outside_model_seconds": round(other / rounds, 2), "outside_model_share": round(other / sync, 3)}


def print_real(figures: dict[str, Any], end_to_end: dict[str, Any] | None) -> None:
    print(f"{'corpus':<28} {'files':>6} {'mode':>10} {'ok/empty/failed':>16} {'pages/s':>8} {'per CPU s':>9}   "
          f"before: ok/no text/failed, pages/s, per CPU s")
    for name, entry in figures.items():
        for mode in ("raw", "structured"):
            now, before = entry[mode], entry.get(f"{mode}_before")
            counts = f"{now['extracted']}/{now['empty']}/{now['failed']}"
            old = (f"{before['extracted']}/{before['empty']}/{before['failed']}, {before['pages_per_second']}, "
                   f"{before['pages_per_cpu_second']}" if before else "-")
            print(f"{name:<28} {entry['files_sampled']:>6} {mode:>10} {counts:>16} {now['pages_per_second']:>8} "
                  f"{now['pages_per_cpu_second']:>9}   {old}")
    if end_to_end:
        e = end_to_end
        print(f"end to end (PostgreSQL pages, structured, {len(e['rounds'])} alternating rounds): {e['chunks']} "
              f"chunks in {e['sync_seconds']}s = {e['chunks_per_second']} chunks/s; bare model "
              f"{e['bare_model_seconds']}s = {e['bare_model_chunks_per_second']} chunks/s; sync/bare "
              f"{e['sync_over_bare_model']}x wall, {e['sync_over_bare_model_cpu']}x CPU; outside the model "
              f"{e['outside_model_seconds']}s a sync ({e['outside_model_share']:.1%})")
