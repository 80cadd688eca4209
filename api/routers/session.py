"""Who the caller is: the console's sign-in check and what it may show (roles per project)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.deps import get_principal
from api.fastjson import OrjsonRoute
from api.keys import Principal

router = APIRouter(prefix="/v1", tags=["session"], route_class=OrjsonRoute)


@router.get("/whoami", summary="The calling key: its name, global admin or its role per project")
def whoami(request: Request, principal: Principal = Depends(get_principal)) -> dict:
    return {"key_id": principal.key_id, "name": principal.name, "admin": principal.admin,
            "roles": dict(principal.roles), "auth": request.app.state.settings.auth}
