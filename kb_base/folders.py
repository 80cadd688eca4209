"""Managed folders: a project's named file areas (source documents, page images).

Paths inside a folder are written like ``/dir/file.png``. Every path is
checked before touching the disk: no ``..``, no NUL or backslash, nothing
that resolves outside the folder (symlinks included). Writes land in a
temporary file and are renamed into place on close, so a reader never sees
half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, BinaryIO

from kb_base.disk import disk_full_error, is_disk_full
from kb_base.errors import NotFoundError, PathError

MAX_PATH_LENGTH = 1024
MAX_NAME_BYTES = 255  # one name in a path (a file or a folder), as most file systems allow


@dataclass(frozen=True)
class ManagedFolderDocumentRef:
    """Points at an original document inside a managed folder (as in the reference API)."""

    path: str
    folder_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalise_path(self.path))
        if not isinstance(self.folder_id, str) or not self.folder_id:
            raise PathError("ManagedFolderDocumentRef needs a folder id")

    def to_dict(self) -> dict[str, str]:
        return {"type": "managed_folder", "folder_id": self.folder_id, "path": self.path}


def normalise_path(path: str) -> str:
    """Canonical ``/a/b`` form of a folder path, or PathError naming what is wrong."""
    if not isinstance(path, str) or not path.strip():
        raise PathError(f"folder path must be a non-empty string, got {path!r}")
    if len(path) > MAX_PATH_LENGTH:
        raise PathError(f"folder path longer than {MAX_PATH_LENGTH} characters")
    if "\x00" in path or "\\" in path or not path.isprintable():
        raise PathError(f"folder path {path!r} contains a NUL, a backslash or a control character")
    parts = [p for p in PurePosixPath("/" + path.lstrip("/")).parts[1:] if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathError(f"folder path {path!r} may not contain '..'")
    if not parts:
        raise PathError(f"folder path {path!r} names the folder itself, not a file")
    for part in parts:
        # the file system's limit per name (NAME_MAX); Path.is_file() raises on a longer one instead of saying no
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise PathError(f"folder path {path[:80]!r}...: the name {part[:40]!r}... is longer than "
                            f"{MAX_NAME_BYTES} bytes of UTF-8")
    return "/" + "/".join(parts)


class _AtomicWriter:
    """A binary file that appears at its final path only when closed without error."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
        self.tmp = Path(tmp)
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self._discard()
            if is_disk_full(exc):
                raise disk_full_error(exc, f"upload of {self.target.name!r}") from exc
            raise

    def close(self, commit: bool = True) -> None:
        if self.file.closed:
            return
        if not commit:
            self._discard()
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.target)
        except OSError as exc:
            self._discard()
            if is_disk_full(exc):
                raise disk_full_error(exc, f"upload of {self.target.name!r}") from exc
            raise

    def _discard(self) -> None:
        """Drop the partial file; closing may fail again on a full disk (the buffer cannot be flushed)."""
        try:
            self.file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> _AtomicWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(commit=exc_type is None)


class ManagedFolder:
    def __init__(self, project_key: str, folder_id: str, name: str, root: Path) -> None:
        self.project_key = project_key
        self.id = folder_id
        self.name = name
        self.root = root

    def get_id(self) -> str:
        return self.id

    @property
    def full_id(self) -> str:
        return f"{self.project_key}.{self.id}"

    def _resolve(self, path: str) -> Path:
        clean = normalise_path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        root = self.root.resolve()
        target = (root / clean.lstrip("/")).resolve()
        if not target.is_relative_to(root) or target == root:
            raise PathError(f"folder path {path!r} resolves outside managed folder {self.id}")
        return target

    def get_writer(self, path: str) -> _AtomicWriter:
        return _AtomicWriter(self._resolve(path))

    def upload_data(self, path: str, data: bytes) -> None:
        with self.get_writer(path) as writer:
            writer.write(data)

    def upload_stream(self, path: str, stream: BinaryIO, chunk_size: int = 1 << 20) -> int:
        total = 0
        with self.get_writer(path) as writer:
            while chunk := stream.read(chunk_size):
                total += writer.write(chunk)
        return total

    def upload_file(self, path: str, local_file: str | Path) -> int:
        with open(local_file, "rb") as stream:
            return self.upload_stream(path, stream)

    def get_download_stream(self, path: str) -> BinaryIO:
        target = self._resolve(path)
        if not target.is_file():
            raise NotFoundError(f"file {normalise_path(path)!r} does not exist in managed folder {self.id}")
        return open(target, "rb")

    def local_file(self, path: str) -> Path:
        """The file's path on this machine (for readers that want a path, such as ingestion)."""
        target = self._resolve(path)
        if not target.is_file():
            raise NotFoundError(f"file {normalise_path(path)!r} does not exist in managed folder {self.id}")
        return target

    def read(self, path: str) -> bytes:
        with self.get_download_stream(path) as stream:
            return stream.read()

    def exists(self, path: str) -> bool:
        return self._resolve(path).is_file()

    def list_paths(self) -> list[str]:
        return sorted(self._iter_paths())

    def _iter_paths(self) -> Iterator[str]:
        if not self.root.exists():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".upload-"):
                    continue
                rel = Path(dirpath, name).relative_to(self.root)
                yield "/" + rel.as_posix()

    def delete_path(self, path: str) -> None:
        target = self._resolve(path)
        if not target.is_file():
            raise NotFoundError(f"file {normalise_path(path)!r} does not exist in managed folder {self.id}")
        target.unlink()

    def __repr__(self) -> str:
        return f"ManagedFolder({self.full_id!r}, name={self.name!r})"
