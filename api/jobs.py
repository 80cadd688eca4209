"""Background jobs of the service (ingestion of a folder's file, folder sync), run by any server of a deployment.

Jobs live in the catalog database (``kb.catalog_db.jobs``: SQLite on one machine, PostgreSQL shared by several
servers), so any server answers a poll and a restart forgets nothing. Every ``kb serve`` process runs one
``JobRunner``: a claim loop that takes queued jobs, and jobs whose server stopped heartbeating, up to
``KB_JOB_WORKERS`` at a time (default 1: a knowledge bank has one writer anyway), and a heartbeat thread that
keeps the jobs it runs its own (every ``KB_JOB_HEARTBEAT_SECONDS``, default 2) and saves their progress. A
folder sync starts at once on the server that accepted it (it holds the knowledge bank's sync lock there).

A job runs from its stored payload alone (one handler per kind, given by the app), so another server can run
it again: ingestion and folder sync key every chunk by id and content hash and skip chunks already stored
with the same hash, and sync compares files with its records (in the catalog when several servers share it),
so a re-run writes nothing twice and embeds nothing already committed. A server that finds its job taken
over (it paused past the lapse) stops it at the next commit; its late writes to the job are refused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kb.catalog_db.jobs import MAX_ATTEMPTS, JobRow, JobStore, is_cancelled
from kb_base.errors import KBError

log = logging.getLogger("kb.api.jobs")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class JobDeferred(Exception):  # noqa: N818 - a signal, not a failure
    """This server cannot run the job now (a sync of its knowledge bank runs here): give it back, unstarted."""


class JobStopped(Exception):  # noqa: N818
    """The job must stop at this commit: it was taken over by another server, or this server is stopping."""


class RunningJob:
    """A job this process runs: what the handler reads (payload), and where it reports progress."""

    def __init__(self, runner: JobRunner, row: JobRow, extra: Mapping[str, Any], claimed: bool) -> None:
        self.runner, self.row, self.extra, self.claimed = runner, row, extra, claimed
        self.id, self.payload = row.id, row.payload
        self.progress: dict[str, Any] = dict(row.progress)
        self.progress_reader: Callable[[], dict[str, Any]] | None = None  # live progress (sync: its report)
        self.stop = threading.Event()
        self.lost = False
        self.cancelled = False

    def current_progress(self) -> dict[str, Any]:
        return self.progress_reader() if self.progress_reader is not None else self.progress

    def committed(self, progress: dict[str, Any] | None = None) -> None:
        """A handler's commit landed: save the progress now, and stop here if the job must stop."""
        if progress is not None:
            self.progress = progress
        if not self.stop.is_set():
            self.runner.save_progress(self)
        if self.stop.is_set():
            why = ("it was cancelled" if self.cancelled else "another server took it over" if self.lost
                   else "this server is stopping")
            raise JobStopped(f"job {self.id} stops: {why}")


Handler = Callable[[RunningJob], dict[str, Any]]


class JobRunner:
    def __init__(self, store: JobStore, handlers: Mapping[str, Handler], workers: int | None = None,
                 poll_seconds: float | None = None, heartbeat_seconds: float | None = None,
                 server_id: str | None = None) -> None:
        self.store, self.handlers = store, dict(handlers)
        self.workers = workers or int(_env_float("KB_JOB_WORKERS", 1))
        self.poll_seconds = poll_seconds or _env_float("KB_JOB_POLL_SECONDS", 1.0)
        self.heartbeat_seconds = heartbeat_seconds or _env_float("KB_JOB_HEARTBEAT_SECONDS", 2.0)
        self.server_id = server_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._running: dict[str, tuple[RunningJob, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> JobRunner:
        for target, name in ((self._claim_loop, "kb-job-claims"), (self._heartbeat_loop, "kb-job-heartbeats")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    # --- starting jobs --------------------------------------------------------------------------

    def submit(self, kind: str, project_key: str, kb_id: str, payload: dict[str, Any],
               progress: dict[str, Any] | None = None, job_id: str | None = None) -> JobRow:
        """Queue a job for whichever server claims it first (this one is woken to try at once)."""
        row = self.store.submit(kind, project_key, kb_id, payload, progress, job_id=job_id)
        self._wake.set()
        return row

    def start_here(self, kind: str, project_key: str, kb_id: str, payload: dict[str, Any],
                   progress: dict[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> JobRow:
        """A job that runs on this server from the start (``extra``: what it holds already, e.g. a lock)."""
        row = self.store.submit(kind, project_key, kb_id, payload, progress, owner=self.server_id)
        self._launch(row, extra or {}, claimed=False)
        return row

    def _launch(self, row: JobRow, extra: Mapping[str, Any], claimed: bool) -> None:
        job = RunningJob(self, row, extra, claimed)
        thread = threading.Thread(target=self._run, args=(job,), name=f"kb-job-{row.id[:8]}", daemon=True)
        with self._lock:
            self._running[row.id] = (job, thread)
        thread.start()

    def _run(self, job: RunningJob) -> None:
        store, owner = self.store, self.server_id
        try:
            if is_cancelled(job.row.error):  # cancelled while its first server ran it, and that server died
                store.finish(job.id, owner, "cancelled", error=job.row.error, progress=job.progress)
                return
            if job.row.attempts > MAX_ATTEMPTS:
                store.finish(job.id, owner, "failed", error={
                    "code": "abandoned", "message": f"the job was started {MAX_ATTEMPTS} times and its server "
                                                    "stopped each time; see the servers' logs"})
                return
            if job.row.attempts > 1:
                log.warning("job %s (%s) taken over: attempt %d", job.id, job.row.kind, job.row.attempts)
            report = self.handlers[job.row.kind](job)
        except JobDeferred as exc:
            log.info("job %s given back: %s", job.id, exc)
            store.release(job.id, owner, attempted=False)
        except JobStopped as exc:
            log.warning("%s", exc)
            if job.cancelled:
                store.finish(job.id, owner, "cancelled", progress=job.current_progress(),
                             error=(store.get(job.id) or job.row).error)
            elif not job.lost:
                store.release(job.id, owner, attempted=True)  # the next claim, here or elsewhere, goes on
        except KBError as exc:
            store.finish(job.id, owner, "failed", error={"code": exc.code, "message": str(exc)},
                         progress=job.current_progress())
        except Exception as exc:  # a job must end in a state the console can show, never hang in "running"
            log.exception("job %s failed", job.id)
            store.finish(job.id, owner, "failed", progress=job.current_progress(),
                         error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        else:
            if not store.finish(job.id, owner, "succeeded", report=report, progress=job.current_progress()):
                log.warning("job %s finished here, but another server had taken it over: its result stands",
                            job.id)
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            self._wake.set()  # a worker is free

    # --- the claim loop and the heartbeats ------------------------------------------------------

    def _free_workers(self) -> int:
        with self._lock:
            return self.workers - sum(1 for job, _ in self._running.values() if job.claimed)

    def _claim_loop(self) -> None:
        failing = False
        while not self._closing.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            while not self._closing.is_set() and self._free_workers() > 0:
                try:
                    row = self.store.claim(self.server_id) if self.store.any_claimable() else None
                except Exception as exc:  # the database is down: try again at the next poll
                    if not failing:
                        log.warning("cannot claim jobs (%s: %s)", type(exc).__name__, str(exc)[:200])
                    failing = True
                    break
                failing = False
                if row is None:
                    break
                with self._lock:
                    ours = row.id in self._running
                if ours:  # its heartbeats lapsed while the database was away: the claim renewed them, nothing to run
                    continue
                self._launch(row, {}, claimed=True)

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.heartbeat_seconds):
            with self._lock:
                running = [job for job, _ in self._running.values()]
            for job in running:
                self.save_progress(job)

    def save_progress(self, job: RunningJob) -> None:
        """Heartbeat one job with its progress; a job found taken over is told to stop."""
        try:
            state = self.store.heartbeat(job.id, self.server_id, job.current_progress())
        except Exception as exc:  # the database is down: the job goes on, and the next heartbeat tries again
            log.warning("cannot heartbeat job %s (%s)", job.id, type(exc).__name__)
            return
        if state == "cancel" and not job.cancelled:
            log.info("job %s was cancelled; it stops at its next commit", job.id)
            job.cancelled = True
            job.stop.set()
        elif state == "lost" and not job.lost:
            log.warning("job %s was taken over by another server; it stops here at its next commit", job.id)
            job.lost = True
            job.stop.set()

    def cancel(self, job_id: str, by: str = "a request") -> JobRow | None:
        """Cancel a job in the database; one running here is told at once rather than at its next heartbeat."""
        row = self.store.cancel(job_id, by)
        with self._lock:
            entry = self._running.get(job_id)
        if entry is not None and row is not None and row.state == "running":
            self.save_progress(entry[0])
        return row

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def close(self, timeout: float = 30.0) -> None:
        """Stop claiming; running jobs stop at their next commit and are given back for the next claim."""
        self._closing.set()
        self._wake.set()
        with self._lock:
            running = list(self._running.values())
        for job, _ in running:
            job.stop.set()
        for _, thread in running:
            thread.join(timeout)
        for thread in self._threads:
            thread.join(timeout)
