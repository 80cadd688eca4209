"""Background jobs of the service (ingestion of a folder's file), with progress and a final report.

Jobs run one at a time per process in a small thread pool (a knowledge bank has one writer anyway) and live in
memory: a restart forgets them, while what they committed stays committed (ingestion commits every
``commit_every`` chunks and a re-run skips what is already stored). The newest ``MAX_JOBS`` are kept.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kb_base.errors import KBError, NotFoundError

log = logging.getLogger("kb.api.jobs")
MAX_JOBS = 200


@dataclass
class Job:
    id: str
    kind: str
    project_key: str
    target: dict[str, Any]  # what the job works on (knowledge bank, folder, path), for the console
    state: str = "queued"  # queued -> running -> succeeded | failed
    progress: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "project_key": self.project_key, "target": self.target,
                "state": self.state, "progress": self.progress, "report": self.report, "error": self.error,
                "created_at": self.created_at, "finished_at": self.finished_at}


class JobRegistry:
    def __init__(self, workers: int = 1) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kb-job")

    def submit(self, kind: str, project_key: str, target: dict[str, Any],
               work: Callable[[Job], dict[str, Any]]) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind, project_key, target)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_JOBS:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]]) -> None:
        job.state = "running"
        try:
            job.report = work(job)
            job.state = "succeeded"
        except KBError as exc:
            job.error, job.state = {"code": exc.code, "message": str(exc)}, "failed"
        except Exception as exc:  # a job must end in a state the console can show, never hang in "running"
            log.exception("job %s failed", job.id)
            job.error, job.state = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}, "failed"
        finally:
            job.finished_at = time.time()

    def get(self, project_key: str, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.project_key != project_key:
            raise NotFoundError(f"job {job_id!r} does not exist in project {project_key!r} (jobs live in memory "
                                "and are forgotten when the service restarts)")
        return job

    def list(self, project_key: str) -> list[Job]:
        with self._lock:
            return [j for j in reversed(self._jobs.values()) if j.project_key == project_key]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
