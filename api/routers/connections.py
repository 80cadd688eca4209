"""Connections (embedding endpoints, remote stores, rerankers): global admin only, secrets write-only.

A connection's secrets (``api_key``, ``password``, tokens, a password inside a URL) are stored in the
catalog and go out only to the service they are for: every answer here lists them masked as ``***``, and
the request log holds the method and path, never a body.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import ForbiddenError, get_client, get_principal
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import ConnectionBody, ConnectionIn, ConnectionOut
from kb.client import EmbeddedClient
from kb_base.errors import NotFoundError

router = APIRouter(prefix="/v1/connections", tags=["connections"], route_class=OrjsonRoute)


async def global_admin(principal: Principal = Depends(get_principal)) -> Principal:
    # connections serve every project (a store or model any knowledge bank may use): no project role is enough
    if not principal.admin:
        raise ForbiddenError("connections need a global admin key")
    return principal


def _listed(client: EmbeddedClient, name: str) -> dict[str, Any]:
    for item in client.list_connections():
        if item["name"] == name:
            return item
    raise NotFoundError(f"connection {name!r} does not exist")


@router.get("", response_model=list[ConnectionOut], summary="Connections, with their secrets masked")
def list_connections(client: EmbeddedClient = Depends(get_client),
                     _: Principal = Depends(global_admin)) -> list[dict[str, Any]]:
    return client.list_connections()


@router.post("", response_model=ConnectionOut, status_code=201,
             summary="Create a connection (409 already_exists; PUT replaces)")
def create_connection(body: ConnectionIn, client: EmbeddedClient = Depends(get_client),
                      _: Principal = Depends(global_admin)) -> dict[str, Any]:
    client.create_connection(body.name, body.type, body.params)
    return _listed(client, body.name)


@router.get("/{name}", response_model=ConnectionOut, summary="A connection, with its secrets masked")
def get_connection(name: str, client: EmbeddedClient = Depends(get_client),
                   _: Principal = Depends(global_admin)) -> dict[str, Any]:
    return _listed(client, name)


@router.put("/{name}", response_model=ConnectionOut, summary="Create or replace a connection")
def put_connection(name: str, body: ConnectionBody, client: EmbeddedClient = Depends(get_client),
                   _: Principal = Depends(global_admin)) -> dict[str, Any]:
    client.create_connection(name, body.type, body.params, replace=True)
    return _listed(client, name)


@router.delete("/{name}", status_code=204, summary="Delete a connection (404 when there is none)")
def delete_connection(name: str, client: EmbeddedClient = Depends(get_client),
                      _: Principal = Depends(global_admin)) -> Response:
    client.delete_connection(name)
    return Response(status_code=204)
