"""The commit point of remote-store knowledge banks in a shared database, for several kb servers (issue 28).

``schema.py``: the tables (``LEDGER_METADATA``; the catalog's Alembic revision 0003 creates them), the engines, the
database's clock. ``lease.py``: the writer's lease (holder, expiry, an epoch that only grows), renewed by a
thread. ``database.py``: ``DatabaseLedger``, the same interface as the KB folder's ``GenerationLedger``
(``stores.generations.CommitPoint``), with a compare-and-set commit that fences off a writer whose lease was
taken over; ``open_ledger`` picks one of the two. ``watch.py``: each process's cache of committed generations,
kept current by PostgreSQL ``LISTEN/NOTIFY``, so a search makes no round trip. The protocol:
docs/internals/generations.md.
"""
