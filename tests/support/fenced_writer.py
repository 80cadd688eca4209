"""A writer process on one Elasticsearch knowledge bank whose commit point is in a shared database (issue 28).

Usage: fenced_writer ES_URL DATABASE_URL KB_ID NAME LEASE_SECONDS MODE [COUNT]

Every write (``write_generation``) adds three new documents ``<NAME>-<G>-<k>`` and replaces the document
``shared``, all with metadata {"gen": G, "writer": NAME}, so a reader can tell which writer wrote which
generation. Before writing it prints ``intent G <ids as JSON>``; after its commit ``acked G``.

MODE ``loop``: COUNT writes (0: until killed), printing ``busy`` or ``fenced G`` when refused and going on.
MODE ``steps``: one command per stdin line: ``begin`` (prints ``begun G EPOCH``), ``write`` (``written``),
``commit`` (``acked G``); a refusal prints ``fenced G`` or ``error <type>`` and the process goes on.
"""

from __future__ import annotations

import json
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from kb_base.errors import KBError, WriterBusyError, WriterFencedError
from stores.base import Record, StoreContext
from stores.elasticsearch.store import ElasticsearchStore

DIM = 8


def open_es_store(es_url: str, database_url: str, kb_id: str, lease_seconds: float) -> ElasticsearchStore:
    folder = Path(tempfile.mkdtemp(prefix="kb-fenced-"))  # each server's own KB folder: nothing shared there
    store = ElasticsearchStore(StoreContext(kb_id, folder, connection={"url": es_url, "timeout": 10},
                                            database_url=database_url))
    store.ledger.lease_seconds = lease_seconds  # type: ignore[attr-defined]  # short leases make tests quick
    return store


def generation_records(name: str, generation: int) -> list[Record]:
    rng = np.random.default_rng(zlib.crc32(f"{name}:{generation}".encode()))
    meta = {"gen": generation, "writer": name}
    ids = [f"{name}-{generation}-{k}" for k in range(3)] + ["shared"]
    return [Record(i, f"{name} wrote {i} at {generation}", dict(meta), rng.normal(size=DIM).astype(np.float32))
            for i in ids]


def say(*words: Any) -> None:
    print(*words, flush=True)


def write_generation(store: ElasticsearchStore, name: str, timeout: float = 60.0) -> int:
    with store.begin(timeout) as tx:
        records = generation_records(name, tx.generation)
        say("intent", tx.generation, json.dumps([r.id for r in records]))
        tx.upsert(records)
    # the with block committed (the commit point) when it closed
    say("acked", tx.generation)
    return tx.generation


def loop(store: ElasticsearchStore, name: str, count: int) -> None:
    done = 0
    while count == 0 or done < count:
        try:
            write_generation(store, name)
            done += 1
        except WriterFencedError as exc:
            say("fenced", exc)
        except WriterBusyError:
            say("busy")


def steps(store: ElasticsearchStore, name: str) -> None:
    tx: Any = None
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "begin":
                tx = store.begin(60.0)
                say("begun", tx.generation, tx.write.lease.epoch)
            elif command == "write":
                records = generation_records(name, tx.generation)
                say("intent", tx.generation, json.dumps([r.id for r in records]))
                tx.upsert(records)
                say("written")
            elif command == "commit":
                tx.commit()
                say("acked", tx.generation)
            elif command == "quit":
                return
        except WriterFencedError as exc:
            say("fenced", tx.generation, exc)
        except KBError as exc:
            say("error", type(exc).__name__, exc)


def main() -> None:
    es_url, database_url, kb_id, name, lease = sys.argv[1:6]
    mode = sys.argv[6]
    store = open_es_store(es_url, database_url, kb_id, float(lease))
    say("ready")
    if mode == "loop":
        loop(store, name, int(sys.argv[7]) if len(sys.argv) > 7 else 0)
    else:
        steps(store, name)
    store.close()


if __name__ == "__main__":
    main()
