"""Managed folders and their files."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import get_client, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import FileEntry, FolderIn, FolderOut
from kb.client import EmbeddedClient
from kb_base.errors import NotFoundError, PathError

router = APIRouter(prefix="/v1/projects/{project_key}/folders", tags=["managed folders"],
                   route_class=OrjsonRoute)


def _utf8_path(request: Request, path: str) -> str:
    """The file path, refused when its percent-encoding is not UTF-8 (Starlette would decode the bytes to
    U+FFFD and store a file under a name nobody sent)."""
    try:
        unquote_to_bytes(request.scope.get("raw_path") or b"").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PathError(f"folder path {path!r} is not valid UTF-8 once percent-decoded ({exc.reason})") from None
    return path


@router.get("", response_model=list[FolderOut])
def list_folders(project_key: str, client: EmbeddedClient = Depends(get_client),
                 _: Principal = Depends(require("reader"))) -> list[dict]:
    return [{**f, "project_key": project_key} for f in client.get_project(project_key).list_managed_folders()]


@router.post("", response_model=FolderOut, status_code=201)
def create_folder(project_key: str, body: FolderIn, client: EmbeddedClient = Depends(get_client),
                  _: Principal = Depends(require("writer"))) -> dict:
    folder = client.get_project(project_key).create_managed_folder(body.name)
    return {"id": folder.id, "name": folder.name, "project_key": project_key}


@router.delete("/{folder_id}", status_code=204)
def delete_folder(project_key: str, folder_id: str, client: EmbeddedClient = Depends(get_client),
                  _: Principal = Depends(require("admin"))) -> Response:
    client.get_project(project_key).delete_managed_folder(folder_id)
    return Response(status_code=204)


@router.get("/{folder_id}/files", response_model=list[str])
def list_files(project_key: str, folder_id: str, client: EmbeddedClient = Depends(get_client),
               _: Principal = Depends(require("reader"))) -> list[str]:
    return client.get_project(project_key).get_managed_folder(folder_id).list_paths()


@router.get("/{folder_id}/manifest", response_model=list[FileEntry],
            summary="Every file with its size and sha256 (what `kb sync --url` compares before uploading)")
def manifest(project_key: str, folder_id: str, client: EmbeddedClient = Depends(get_client),
             _: Principal = Depends(require("reader"))) -> list[dict]:
    folder = client.get_project(project_key).get_managed_folder(folder_id)
    entries = []
    for path in folder.list_paths():
        try:
            with folder.get_download_stream(path) as stream:
                digest = hashlib.file_digest(stream, "sha256").hexdigest()
                size = stream.tell()
        except NotFoundError:  # deleted while listing: not in the manifest
            continue
        entries.append({"path": path, "size": size, "sha256": digest})
    return entries


@router.head("/{folder_id}/files/{path:path}", summary="Whether a file exists (200 with its size, else 404)")
def file_exists(project_key: str, folder_id: str, path: str, request: Request,
                client: EmbeddedClient = Depends(get_client), _: Principal = Depends(require("reader"))) -> Response:
    target = client.get_project(project_key).get_managed_folder(folder_id).local_file(_utf8_path(request, path))
    return Response(status_code=200, headers={"content-length": str(target.stat().st_size)})


@router.put("/{folder_id}/files/{path:path}", status_code=201, summary="Upload a file (raw request body)")
async def upload(project_key: str, folder_id: str, path: str, request: Request,
                 client: EmbeddedClient = Depends(get_client), _: Principal = Depends(require("writer"))) -> dict:
    folder = client.get_project(project_key).get_managed_folder(folder_id)
    path = _utf8_path(request, path)
    size = 0
    with folder.get_writer(path) as writer:  # atomic: nothing appears if the upload breaks off
        async for chunk in request.stream():
            size += writer.write(chunk)
    return {"path": "/" + path.lstrip("/"), "size": size}


@router.get("/{folder_id}/files/{path:path}", response_class=StreamingResponse)
def download(project_key: str, folder_id: str, path: str, client: EmbeddedClient = Depends(get_client),
             _: Principal = Depends(require("reader"))) -> StreamingResponse:
    stream = client.get_project(project_key).get_managed_folder(folder_id).get_download_stream(path)
    return StreamingResponse(iter(lambda: stream.read(1 << 16), b""), media_type="application/octet-stream",
                             background=None)


@router.delete("/{folder_id}/files/{path:path}", status_code=204)
def delete_file(project_key: str, folder_id: str, path: str, client: EmbeddedClient = Depends(get_client),
                _: Principal = Depends(require("writer"))) -> Response:
    client.get_project(project_key).get_managed_folder(folder_id).delete_path(path)
    return Response(status_code=204)
