"""Ingestion and folder sync jobs in the catalog database, claimed and run by any server: ``JobStore``.

A small table of kb's own rather than a queue library: procrastinate and PgQueuer run on PostgreSQL only, and
the catalog must also run on its embedded SQLite default.

A job is ``queued``, then ``running`` on one server (its ``owner``), then ``succeeded``, ``failed`` or
``cancelled``. A server claims a queued job, or a running one whose heartbeat lapsed (its server died or
hung), in one transaction: on PostgreSQL the candidate row is taken with ``FOR UPDATE SKIP LOCKED``, so
claimers never wait on each other or take the same row; on SQLite (one machine) the transaction holds the
database's write lock from BEGIN. The UPDATE repeats the claim condition either way. The owner heartbeats,
and each of its later writes (progress, the end) holds only while it still owns the job: a server that
paused past the lapse and was taken over cannot overwrite its successor's progress or result. Heartbeats
are compared on the database's clock, never a server's (servers' clocks may disagree).

Job writes do not touch ``catalog_state``: a heartbeat must not invalidate every server's settings cache.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, desc, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from kb.catalog_db.database import CatalogDatabase
from kb.catalog_db.tables import jobs
from kb_base.errors import JobFinishedError, SyncBusyError
from stores.commit_point.schema import database_now

TERMINAL = ("succeeded", "failed", "cancelled")
MAX_KEPT_JOBS = 200  # finished jobs kept per project and kind; older ones are deleted as new ones arrive
MAX_ATTEMPTS = 5  # a job that took its server down this many times is failed, not claimed again


def is_cancelled(error: str | dict[str, Any] | None) -> bool:
    """A job's ``error`` is a cancellation (asked for while it ran, or done)."""
    if isinstance(error, str):
        error = json.loads(error)
    return isinstance(error, dict) and error.get("code") == "cancelled"


def lapse_seconds() -> float:
    """``KB_JOB_LAPSE_SECONDS``: a running job whose heartbeat is older than this is taken over (default 10)."""
    return float(os.environ.get("KB_JOB_LAPSE_SECONDS") or 10.0)


@dataclass
class JobRow:
    id: str
    kind: str
    project_key: str
    kb_id: str
    payload: dict[str, Any]
    state: str
    progress: dict[str, Any]
    report: dict[str, Any] | None
    error: dict[str, str] | None
    owner: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None


def _row(row: Any) -> JobRow:
    m = row._mapping
    return JobRow(m["id"], m["kind"], m["project_key"], m["kb_id"], json.loads(m["payload"]), m["state"],
                  json.loads(m["progress"]), json.loads(m["report"]) if m["report"] else None,
                  json.loads(m["error"]) if m["error"] else None, m["owner"], m["attempts"], m["created_at"],
                  m["started_at"], m["finished_at"])


_COLUMNS = [c for c in jobs.c if c.name != "heartbeat_at"]


class JobStore:
    def __init__(self, database: CatalogDatabase, lapse: float | None = None) -> None:
        self.database = database
        self.lapse = lapse_seconds() if lapse is None else lapse
        self._now = database_now(database.engine)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.database.engine.connect() as conn:
            conn.execution_options(kb_write=True)  # SQLite: BEGIN IMMEDIATE, writers queue instead of failing
            with conn.begin():
                yield conn

    def _claimable(self) -> ColumnElement[bool]:
        lapsed = or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at < self._now - self.lapse)
        return or_(jobs.c.state == "queued", and_(jobs.c.state == "running", lapsed))

    # --- submitting and reading -----------------------------------------------------------------

    def submit(self, kind: str, project_key: str, kb_id: str, payload: dict[str, Any],
               progress: dict[str, Any] | None = None, owner: str | None = None,
               job_id: str | None = None) -> JobRow:
        """A new job: queued for any server, or (``owner``) running on that server from the start.

        A second active sync job of one knowledge bank is refused with ``SyncBusyError``, whichever servers
        started them."""
        now = time.time()
        values = {"id": job_id or uuid.uuid4().hex, "kind": kind, "project_key": project_key, "kb_id": kb_id,
                  "payload": json.dumps(payload), "state": "running" if owner else "queued",
                  "progress": json.dumps(progress or {}), "owner": owner, "attempts": 1 if owner else 0,
                  "created_at": now, "started_at": now if owner else None}
        try:
            with self._write() as conn:
                conn.execute(insert(jobs).values(**values, heartbeat_at=self._now if owner else None))
                self._prune(conn, project_key, kind)
        except IntegrityError:
            if kind == "sync":
                raise SyncBusyError(f"knowledge bank {kb_id} is busy: another folder sync is running on it "
                                    "(on this or another server)") from None
            raise
        job = self.get(values["id"])
        assert job is not None
        return job

    def _prune(self, conn: Connection, project_key: str, kind: str) -> None:
        old = (select(jobs.c.id).where(jobs.c.project_key == project_key, jobs.c.kind == kind,
                                       jobs.c.state.in_(TERMINAL))
               .order_by(desc(jobs.c.created_at)).offset(MAX_KEPT_JOBS).limit(1000).subquery())
        conn.execute(delete(jobs).where(jobs.c.id.in_(select(old.c.id))))

    def get(self, job_id: str) -> JobRow | None:
        with self.database.read() as conn:
            row = conn.execute(select(*_COLUMNS).where(jobs.c.id == job_id)).first()
        return _row(row) if row is not None else None

    def list(self, project_key: str, kind: str, kb_id: str | None = None, newest_first: bool = True,
             limit: int = MAX_KEPT_JOBS) -> list[JobRow]:
        query = select(*_COLUMNS).where(jobs.c.project_key == project_key, jobs.c.kind == kind)
        if kb_id is not None:
            query = query.where(jobs.c.kb_id == kb_id)
        order = desc(jobs.c.created_at) if newest_first else jobs.c.created_at
        with self.database.read() as conn:
            rows = conn.execute(query.order_by(order).limit(limit)).all()
        return [_row(r) for r in rows]

    def cancel(self, job_id: str, by: str = "a request") -> JobRow | None:
        """Cancel a job (None: no such job). A queued job is ``cancelled`` at once and never starts. A running
        one keeps ``running`` with the cancellation in its ``error`` until its server stops it at its next
        commit (what it committed before stays) and ends it ``cancelled``; until then it still counts as the
        knowledge bank's active sync. Its server learns of it at its next heartbeat; if that server died, the
        server that takes the job over ends it without running it. Cancelling again changes nothing; a job that
        succeeded or failed raises ``JobFinishedError``."""
        error = json.dumps({"code": "cancelled", "message": f"cancelled by {by}; what the job committed before "
                                                            "it stopped stays committed"})
        with self._write() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == "queued")
                         .values(state="cancelled", finished_at=time.time(), error=error))
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == "running",
                                            jobs.c.error.is_(None)).values(error=error))
        row = self.get(job_id)
        if row is not None and row.state in ("succeeded", "failed"):
            raise JobFinishedError(f"job {job_id} already {row.state}: there is nothing left to cancel")
        return row

    # --- claiming and running -------------------------------------------------------------------

    def any_claimable(self) -> bool:
        """A cheap read (no write lock) before a claim: most polls find nothing to do."""
        with self.database.read() as conn:
            return conn.execute(select(jobs.c.id).where(self._claimable()).limit(1)).first() is not None

    def claim(self, owner: str) -> JobRow | None:
        """Take the oldest claimable job for ``owner``: it is running there, its attempts counted; None if none."""
        with self._write() as conn:
            candidate = conn.execute(select(jobs.c.id).where(self._claimable()).order_by(jobs.c.created_at)
                                     .limit(1).with_for_update(skip_locked=True)).first()
            if candidate is None:
                return None
            claimed = conn.execute(
                update(jobs).where(jobs.c.id == candidate[0], self._claimable())
                .values(state="running", owner=owner, heartbeat_at=self._now, attempts=jobs.c.attempts + 1,
                        started_at=func.coalesce(jobs.c.started_at, time.time()))
                .returning(*_COLUMNS)).first()
        return _row(claimed) if claimed is not None else None

    def heartbeat(self, job_id: str, owner: str, progress: dict[str, Any] | None = None) -> str:
        """The owner is alive (and its progress so far). Returns ``"ours"``, ``"cancel"`` (still ours, but a
        cancellation was asked for: stop) or ``"lost"`` (another server took the job over)."""
        values: dict[str, Any] = {"heartbeat_at": self._now}
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self._write() as conn:
            row = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.owner == owner,
                                                  jobs.c.state == "running").values(**values)
                               .returning(jobs.c.error)).first()
        if row is None:
            return "lost"
        return "cancel" if is_cancelled(row[0]) else "ours"

    def finish(self, job_id: str, owner: str, state: str, report: dict[str, Any] | None = None,
               error: dict[str, str] | None = None, progress: dict[str, Any] | None = None) -> bool:
        """The job's end, if ``owner`` still holds it (False: another server took it over meanwhile)."""
        if state not in TERMINAL:
            raise ValueError(f"not a final state: {state!r}")
        values: dict[str, Any] = {"state": state, "finished_at": time.time(), "heartbeat_at": None,
                                  "report": json.dumps(report) if report is not None else None,
                                  "error": json.dumps(error) if error is not None else None}
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self._write() as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.owner == owner,
                                                   jobs.c.state == "running").values(**values))
        return done.rowcount == 1

    def release(self, job_id: str, owner: str, attempted: bool = False) -> None:
        """Give a running job back at once (this server stops, or cannot run it now): the next claim takes it.
        ``attempted=False``: it did not start here, so this claim does not count as an attempt."""
        values: dict[str, Any] = {"owner": None, "heartbeat_at": None}
        if not attempted:
            values["attempts"] = jobs.c.attempts - 1
        with self._write() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.owner == owner,
                                            jobs.c.state == "running").values(**values))
