"""FastAPI dependencies: the kb client, the caller's identity, and role checks per project.

They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, and three
thread hand-offs per request cost more than these few dictionary and SQLite-index lookups.
"""

from __future__ import annotations

from fastapi import Depends, Request

from api.keys import ANONYMOUS_ADMIN, Principal
from kb.client import EmbeddedClient
from kb.core import CoreKnowledgeBank
from kb_base.errors import KBError


class AuthError(KBError):
    http_status = 401
    code = "unauthenticated"


class ForbiddenError(KBError):
    http_status = 403
    code = "forbidden"


async def get_client(request: Request) -> EmbeddedClient:
    return request.app.state.client


async def get_principal(request: Request) -> Principal:
    settings = request.app.state.settings
    if not settings.auth:
        return ANONYMOUS_ADMIN
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not key:
        raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
    principal = request.app.state.keys.authenticate(key)
    if principal is None:
        raise AuthError("invalid API key")
    request.state.key_id = principal.key_id
    return principal


def require(role: str):  # noqa: ANN201 - returns a FastAPI dependency
    async def check(project_key: str, principal: Principal = Depends(get_principal)) -> Principal:
        if not principal.can(project_key, role):
            # 403 without saying whether the project exists: keys never learn about others' projects
            raise ForbiddenError(f"this API key has no {role} role on project {project_key!r}")
        return principal

    return check


def core_for(client: EmbeddedClient, project_key: str, kb_id: str) -> CoreKnowledgeBank:
    return client.core_knowledge_bank(project_key, kb_id)
