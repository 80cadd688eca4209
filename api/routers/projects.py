"""Projects."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.deps import ForbiddenError, get_client, get_principal, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import ProjectIn, ProjectOut
from kb.client import EmbeddedClient

router = APIRouter(prefix="/v1/projects", tags=["projects"],
                   route_class=OrjsonRoute)


@router.get("", response_model=list[ProjectOut], summary="Projects this key can read")
def list_projects(client: EmbeddedClient = Depends(get_client),
                  principal: Principal = Depends(get_principal)) -> list[dict]:
    return [p for p in client.list_projects() if principal.can(p["key"], "reader")]


@router.post("", response_model=ProjectOut, status_code=201, summary="Create a project (global admin)")
def create_project(body: ProjectIn, client: EmbeddedClient = Depends(get_client),
                   principal: Principal = Depends(get_principal)) -> dict:
    if not principal.admin:
        raise ForbiddenError("creating projects needs a global admin key")
    client.create_project(body.key, body.name)
    return client.catalog.project(body.key)


@router.get("/{project_key}", response_model=ProjectOut)
def get_project(project_key: str, client: EmbeddedClient = Depends(get_client),
                _: Principal = Depends(require("reader"))) -> dict:
    return client.catalog.project(project_key)


@router.delete("/{project_key}", status_code=204,
               summary="Delete an empty project (global admin; 422 while it has knowledge banks or folders)")
def delete_project(project_key: str, client: EmbeddedClient = Depends(get_client),
                   principal: Principal = Depends(get_principal)) -> Response:
    """The embedded ``project.delete()``'s rules: the DEFAULT project stays, and a project is deleted only once
    its knowledge banks and managed folders are (each delete is its own, explicit call)."""
    if not principal.admin:
        raise ForbiddenError("deleting projects needs a global admin key")
    client.get_project(project_key).delete()
    return Response(status_code=204)
