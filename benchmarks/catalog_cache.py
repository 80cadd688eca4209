"""What the catalog costs a search: the settings lookup with the version cache, against a lookup per request.

    python -m benchmarks.catalog_cache [--database-url postgresql://...] [--calls 20000] [--json out.json]

Runs on a temporary SQLite catalog and, with ``--database-url`` (an empty database, upgraded here), on
PostgreSQL. Per backend: the cache-hit path every search takes (``knowledge_bank_settings_text``), the same
lookup as one database read per request (what the cache saves), and how long a change made through a second
catalog takes to reach the first (PostgreSQL: the version poll; SQLite: read per call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from benchmarks.suite import cpu_flags
from kb.catalog import Catalog
from kb.catalog_db.engine import make_engine, normalise_url
from kb.catalog_db.schema import upgrade
from kb.catalog_db.tables import knowledge_banks


def _timed(call: Any, calls: int) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return {"p50_us": round(statistics.median(samples), 2), "p99_us": round(samples[int(len(samples) * 0.99)], 2)}


def measure(location: str | Path, calls: int) -> dict[str, Any]:
    catalog, other = Catalog(location), Catalog(location)
    try:
        catalog.ensure_project("BENCH")
        kb_id = catalog.create_knowledge_bank("BENCH", f"k{time.time_ns()}", {"vector_store_type": "ELASTICSEARCH",
                                                                            "search": {"default_k": 1}})

        def uncached() -> None:
            with catalog.database.read() as conn:
                conn.execute(select(knowledge_banks.c.settings).where(knowledge_banks.c.project_key == "BENCH",
                                                                      knowledge_banks.c.id == kb_id)).scalar()

        catalog.knowledge_bank_settings_text("BENCH", kb_id)
        result = {"database": catalog.database.url.get_backend_name(),
                  "cache_hit": _timed(lambda: catalog.knowledge_bank_settings_text("BENCH", kb_id), calls),
                  "read_per_request": _timed(uncached, max(calls // 10, 100))}
        reach = []
        for k in range(2, 22):
            catalog.knowledge_bank_settings_text("BENCH", kb_id)
            other.save_knowledge_bank_settings("BENCH", kb_id, {"vector_store_type": "ELASTICSEARCH",
                                                                "search": {"default_k": k}})
            started = time.perf_counter()
            while f'"default_k": {k}' not in (catalog.knowledge_bank_settings_text("BENCH", kb_id) or ""):
                time.sleep(0.001)
            reach.append((time.perf_counter() - started) * 1000)
        result["change_reaches_other_catalog_ms"] = {"p50": round(statistics.median(reach), 1),
                                                     "max": round(max(reach), 1)}
        return result
    finally:
        catalog.close()
        other.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalog_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an empty PostgreSQL database to measure beside SQLite")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="kb-catalog-bench-") as work:
        results.append(measure(Path(work) / "catalog.sqlite", args.calls))
    if args.database_url:
        engine = make_engine(normalise_url(args.database_url))
        upgrade(engine)
        engine.dispose()
        results.append(measure(args.database_url, args.calls))
    report = {"machine": {"cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1),
                          "platform": platform.platform(), "python": platform.python_version(),
                          "cpu_flags": cpu_flags()}, "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
