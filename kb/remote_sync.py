"""Folder sync on a kb server: ``core.sync_folder(...)`` on the remote client and ``kb sync --url``.

The server syncs a managed folder it holds (``POST .../sync-jobs``, a background job); the client starts the
job, polls it with the same progress bar as the embedded sync and returns the same ``SyncReport``, or raises
the error the job failed with, as its ``kb.errors`` class.

Why the server syncs a managed folder and never reads a path of its own disk: a path names a place on the
server's file system, which a REST client should not be able to read (``/etc``, another project's files), and
behind several servers it names a different directory on each. A local directory is therefore first mirrored
into a managed folder: only the files whose sha256 differs from the server's copy are uploaded and files gone
from the directory are deleted there, so a re-run moves only what changed; then the server syncs that folder.
A mirror folder carries a hidden marker (``/.kb-sync-source.json``; sync skips hidden files): the mirror
refuses a non-empty folder without it, so it never deletes files someone put in a folder by other means.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from kb.remote_folders import RemoteManagedFolder, sha256_of
from kb_base import errors
from writers.sync import SyncOptions, SyncReport, as_folder

if TYPE_CHECKING:  # the remote core knowledge bank calls these functions
    from kb.remote_knowledge_bank import RemoteCoreKnowledgeBank

MARKER = "/.kb-sync-source.json"
POLL_SECONDS = 0.25
# what SyncJobIn takes: lock_timeout is the client's (it retries a busy start), the rest go to the server
SERVER_OPTIONS = ("extraction", "screenshots", "ocr", "chunk_size", "chunk_overlap", "batch_files", "batch_chunks",
                  "screenshot_scale", "screenshot_timeout", "max_file_bytes", "embed_context", "include")


def _hidden(path: str) -> bool:
    """Hidden files and folders are not documents, as ``writers.sync`` skips them."""
    return any(part.startswith(".") for part in path.split("/"))


@dataclass
class MirrorReport:
    folder_id: str
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_uploaded: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"upload to managed folder {self.folder_id}: {len(self.uploaded)} files uploaded "
                f"({self.bytes_uploaded / 2**20:.1f} MiB), {len(self.deleted)} deleted, {self.unchanged} unchanged "
                f"in {self.seconds:.1f}s")


def mirror_directory(root: Path, folder: RemoteManagedFolder, progress: bool = False) -> MirrorReport:
    """Make ``folder`` hold exactly the (non-hidden) files of the local directory ``root``; see the module doc."""
    started = time.perf_counter()
    local = as_folder(root)  # NotFoundError when root is no directory, as the embedded sync says it
    paths = [p for p in local.list_paths() if not _hidden(p)]
    remote = folder.manifest()
    if MARKER not in remote and any(not _hidden(p) for p in remote):
        raise errors.InvalidInputError(
            f"managed folder {folder.name!r} ({folder.full_id}) holds files that kb sync did not upload; "
            "mirroring a directory into it would delete them: choose a new or empty folder")
    report = MirrorReport(folder_id=folder.full_id)
    todo = []
    for path in paths:
        if remote.get(path) == sha256_of(local.local_file(path)):
            report.unchanged += 1
        else:
            todo.append(path)
    sizes = {path: local.local_file(path).stat().st_size for path in todo}
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc=f"upload {local.name}",
              disable=not progress, dynamic_ncols=True) as bar:
        for path in todo:
            folder.upload_file(path, local.local_file(path))
            report.uploaded.append(path)
            report.bytes_uploaded += sizes[path]
            bar.update(sizes[path])
    keep = set(paths)
    gone = sorted(p for p in remote if not _hidden(p) and p not in keep)
    for path in gone:
        try:
            folder.delete_path(path)
        except errors.NotFoundError:  # deleted meanwhile: gone either way
            pass
        report.deleted.append(path)
    marker = {"source": str(Path(root).expanduser().resolve()), "host": socket.gethostname(), "at": time.time()}
    folder.upload_data(MARKER, json.dumps(marker).encode())
    report.seconds = time.perf_counter() - started
    return report


def mirror_folder_for(core: RemoteCoreKnowledgeBank, upload_to: str | None) -> RemoteManagedFolder:
    """The managed folder a local directory is mirrored into: ``upload_to`` (an id or a name, created when no
    folder has it), by default one per knowledge bank named ``<knowledge bank name> sources``."""
    project = core.handle.project
    name = upload_to or f"{core.name} sources"
    for info in project.list_managed_folders():
        if name in (info["id"], info["name"]):
            return RemoteManagedFolder(project, info["id"], info["name"])
    return project.create_managed_folder(name)


def server_folder(core: RemoteCoreKnowledgeBank, ref: str) -> RemoteManagedFolder:
    """A managed folder of the server by id or name in the knowledge bank's project, or ``<PROJECT>.<id>``."""
    project = core.handle.project
    try:
        return project.get_managed_folder(ref)
    except errors.NotFoundError:
        project_key, _, folder_ref = ref.rpartition(".")
        if not project_key:
            raise errors.NotFoundError(f"{ref!r} is neither a local directory nor a managed folder of project "
                                       f"{project.project_key}") from None
        return project.sibling(project_key).get_managed_folder(folder_ref)


def report_of(body: dict[str, Any]) -> SyncReport:
    """A job's report as the embedded sync's ``SyncReport`` (fields this client does not know are left out)."""
    return SyncReport(**{f.name: body[f.name] for f in fields(SyncReport) if f.name in body})


def run_sync_job(core: RemoteCoreKnowledgeBank, folder: RemoteManagedFolder, options: SyncOptions,
                 progress: bool = False) -> SyncReport:
    """Start a sync job of ``folder`` on the server, follow it, and return its report (or raise its error)."""
    transport = core.transport
    body = {"folder_id": folder.full_id, **{name: getattr(options, name) for name in SERVER_OPTIONS}}
    body["include"] = list(options.include)
    deadline = time.monotonic() + options.lock_timeout
    while True:
        try:
            job = transport.json("POST", f"{core.handle.base}/sync-jobs", json=body)
            break
        except errors.SyncBusyError:  # another sync holds the lock: wait as the embedded sync's lock_timeout does
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    path = f"{core.handle.base}/sync-jobs/{job['job_id']}"
    bar = tqdm(total=0, desc=f"sync {folder.name}", unit=" files", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    try:
        while job["state"] in ("queued", "running"):
            _show(bar, job["progress"])
            time.sleep(POLL_SECONDS)
            job = transport.json("GET", path)
        _show(bar, job["progress"])
    finally:
        bar.close()
    if job["state"] != "succeeded":
        error = job.get("error") or {"code": "internal_error", "message": f"sync job {job['job_id']} failed"}
        raise transport.error(error["code"], error["message"])
    return report_of(job["report"])


def _show(bar: tqdm, progress: dict[str, int]) -> None:
    if bar.total != progress["files_to_process"]:
        bar.total = progress["files_to_process"]
    bar.n = progress["files_processed"]
    bar.set_postfix(failed=progress["failed"], refresh=False)
    bar.refresh()
