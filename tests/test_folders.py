"""Managed folders: uploads are atomic, paths can never leave the folder."""

from __future__ import annotations

import io
import os

import pytest

import kb
from kb.client import EmbeddedClient


@pytest.fixture
def folder(client: EmbeddedClient) -> kb.ManagedFolder:
    return client.get_default_project().create_managed_folder("docs")


def test_upload_list_download_delete(folder: kb.ManagedFolder) -> None:
    with folder.get_writer("/reports/2024/q1.txt") as writer:
        writer.write(b"first quarter")
    folder.upload_stream("b.bin", io.BytesIO(b"\x00\x01" * 1000))
    assert folder.list_paths() == ["/b.bin", "/reports/2024/q1.txt"]
    with folder.get_download_stream("/reports/2024/q1.txt") as stream:
        assert stream.read() == b"first quarter"
    folder.delete_path("/b.bin")
    assert folder.list_paths() == ["/reports/2024/q1.txt"]
    with pytest.raises(kb.NotFoundError, match="/b.bin"):
        folder.get_download_stream("/b.bin")


def test_failed_upload_leaves_nothing(folder: kb.ManagedFolder) -> None:
    with pytest.raises(RuntimeError):
        with folder.get_writer("/half.txt") as writer:
            writer.write(b"half of it")
            raise RuntimeError("connection lost")
    assert folder.list_paths() == []
    assert not any(name.startswith(".upload-") for name in os.listdir(folder.root))


@pytest.mark.parametrize("path", ["../escape.txt", "/a/../../escape.txt", "a/../../../etc/passwd", "..",
                                  "/", "", "a\\..\\b", "nul\x00byte", "/./"])
def test_path_traversal_is_refused(folder: kb.ManagedFolder, path: str) -> None:
    with pytest.raises(kb.PathError):
        folder.upload_data(path, b"x")
    with pytest.raises(kb.PathError):
        folder.get_download_stream(path)
    assert folder.list_paths() == []
    assert not (folder.root.parent / "escape.txt").exists()


def test_a_name_longer_than_the_file_system_allows_is_a_path_error(folder: kb.ManagedFolder) -> None:
    fits, too_long = "é" * 127 + "x", "é" * 128  # 255 and 256 bytes of UTF-8
    folder.upload_data(f"a/{fits}", b"x")
    assert folder.read(f"a/{fits}") == b"x"
    for path in (too_long, f"a/{too_long}/b.txt", f"{too_long}.txt"):
        for call in (lambda p: folder.upload_data(p, b"x"), folder.read, folder.exists, folder.delete_path):
            with pytest.raises(kb.PathError, match="255 bytes"):
                call(path)
    assert folder.list_paths() == [f"/a/{fits}"]


def test_symlink_escape_is_refused(folder: kb.ManagedFolder, tmp_path: os.PathLike[str]) -> None:
    outside = os.path.join(tmp_path, "outside")
    os.makedirs(outside)
    folder.root.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, folder.root / "link")
    with pytest.raises(kb.PathError, match="outside"):
        folder.upload_data("/link/secret.txt", b"x")
    assert os.listdir(outside) == []


def test_folders_by_id_and_name(client: EmbeddedClient, folder: kb.ManagedFolder) -> None:
    project = client.get_default_project()
    assert project.get_managed_folder(folder.id).root == project.get_managed_folder("docs").root
    assert folder.full_id == f"DEFAULT.{folder.get_id()}"
    assert [f["name"] for f in project.list_managed_folders()] == ["docs"]
    with pytest.raises(kb.AlreadyExistsError):
        project.create_managed_folder("docs")
    project.delete_managed_folder("docs")
    assert project.list_managed_folders() == []
