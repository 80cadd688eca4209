"""A kb server's managed folders over REST: ``project.get_managed_folder(ref)`` on the remote client.

The same methods as the embedded ``kb_base.folders.ManagedFolder``. Two work differently because the files are
on the server, and say so:

- ``get_writer(path)`` collects what is written in a local temporary file (memory up to 8 MiB) and uploads it
  when the block ends cleanly; an exception uploads nothing. As on the embedded folder, readers never see
  half a file: the server writes the upload atomically too.
- ``local_file(path)`` downloads a copy into the client's scratch directory and returns its path, for readers
  that want a path. The copy is the file as it was when downloaded; changing it changes nothing on the server
  (upload it back), and it is removed when the client closes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import httpx

from kb.remote_checks import path_segment
from kb_base import errors
from kb_base.folders import normalise_path

if TYPE_CHECKING:  # the project (kb.remote) hands out folders
    from kb.remote import RemoteProject

SPOOL_BYTES = 8 * 2**20  # a writer keeps up to this much in memory before it spills to a temporary file
BLOCK = 1 << 20


class ReplayableFile:
    """A file as a request body sent in blocks: each iteration starts again at the beginning, so the
    transport's retry of an idempotent PUT sends the whole file again (a generator would send nothing)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def __iter__(self) -> Iterator[bytes]:
        self.file.seek(0)
        while block := self.file.read(BLOCK):
            yield block


class RemoteFileWriter:
    """``folder.get_writer(path)`` on the remote client: the file appears on the server when closed cleanly."""

    def __init__(self, folder: RemoteManagedFolder, path: str) -> None:
        self.folder, self.path = folder, normalise_path(path)
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - closed in close()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.file.closed:
            raise errors.WriterClosedError(f"the writer of {self.path!r} is closed")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise errors.InvalidInputError(f"write({self.path!r}): the data must be bytes, got {type(data).__name__}")
        written = self.file.write(data)
        self.size += written
        return written

    def close(self, commit: bool = True) -> None:
        if self.file.closed:
            return
        try:
            if commit:
                self.folder.put(self.path, self.file, self.size)
        finally:
            self.file.close()

    def __enter__(self) -> RemoteFileWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(commit=exc_type is None)


class RemoteManagedFolder:
    def __init__(self, project: RemoteProject, folder_id: str, name: str) -> None:
        self.project, self.id, self.name = project, folder_id, name
        self.project_key = project.project_key
        self.transport = project.transport
        self.folder_base = f"{project.base}/folders/{path_segment(folder_id, 'managed folder id')}"
        self.base = f"{self.folder_base}/files"

    def __repr__(self) -> str:
        return f"RemoteManagedFolder({self.full_id!r}, name={self.name!r})"

    def get_id(self) -> str:
        return self.id

    @property
    def full_id(self) -> str:
        return f"{self.project_key}.{self.id}"

    def _path(self, path: str) -> str:
        return self.base + quote(normalise_path(path))

    def put(self, path: str, file: IO[bytes], size: int) -> int:
        """Upload ``size`` bytes of an open, seekable file to ``path`` (atomic on the server); the size."""
        self.transport.request("PUT", self._path(path), content=ReplayableFile(file),
                               headers={"content-length": str(size)})
        return size

    def get_writer(self, path: str) -> RemoteFileWriter:
        return RemoteFileWriter(self, path)

    def upload_data(self, path: str, data: bytes) -> None:
        target = self._path(path)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise errors.InvalidInputError(f"upload_data({path!r}): the data must be bytes, got {type(data).__name__}")
        self.transport.request("PUT", target, content=bytes(data))

    def upload_stream(self, path: str, stream: BinaryIO, chunk_size: int = BLOCK) -> int:
        with self.get_writer(path) as writer:
            while chunk := stream.read(chunk_size):
                writer.write(chunk)
        return writer.size

    def upload_file(self, path: str, local_file: str | Path) -> int:
        normalise_path(path)  # a bad path before the local file is opened, as the embedded folder checks it
        with open(local_file, "rb") as file:
            return self.put(path, file, os.fstat(file.fileno()).st_size)

    def read(self, path: str) -> bytes:
        return self.transport.request("GET", self._path(path)).content

    def get_download_stream(self, path: str) -> BinaryIO:
        """The file's content as a stream (downloaded whole first: a retry never resumes half a file)."""
        local = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the caller closes it
        self._download(path, local)
        local.seek(0)
        return local  # type: ignore[return-value]

    def _download(self, path: str, out: IO[bytes]) -> None:
        try:
            with self.transport.http.stream("GET", self._path(path)) as response:
                if response.status_code >= 400:
                    response.read()
                    self.transport.raise_for(response)
                for block in response.iter_bytes(BLOCK):
                    out.write(block)
        except httpx.TransportError as exc:
            raise errors.StoreUnavailableError(f"kb service at {self.transport.base} unreachable: {exc}") from exc

    def local_file(self, path: str) -> Path:
        """A downloaded copy of the file in the client's scratch directory (see the module docstring)."""
        clean = normalise_path(path)
        target = self.transport.scratch() / "folders" / self.project_key / self.id / clean.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".download-", delete=False) as tmp:
            try:
                self._download(clean, tmp)
            except BaseException:
                Path(tmp.name).unlink(missing_ok=True)
                raise
        Path(tmp.name).replace(target)
        return target

    def exists(self, path: str) -> bool:
        try:
            response = self.transport.http.head(self._path(path))
        except httpx.TransportError as exc:
            raise errors.StoreUnavailableError(f"kb service at {self.transport.base} unreachable: {exc}") from exc
        if response.status_code == 404:
            return False
        if response.status_code >= 400:  # no body to a HEAD: ask again with a GET for the error's class
            self.transport.request("GET", self._path(path))
        return True

    def list_paths(self) -> list[str]:
        return self.transport.json("GET", self.base)

    def manifest(self) -> dict[str, str]:
        """``{path: sha256}`` of every file, computed by the server (what a mirror compares)."""
        return {e["path"]: e["sha256"] for e in self.transport.json("GET", f"{self.folder_base}/manifest")}

    def delete_path(self, path: str) -> None:
        self.transport.request("DELETE", self._path(path))


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
