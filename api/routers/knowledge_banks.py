"""Knowledge banks and their settings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from api.deps import get_client, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import KnowledgeBankIn, KnowledgeBankOut, SettingsBody, SettingsPatch
from kb.client import EmbeddedClient, mask_secrets
from kb.settings_checks import check_search_settings
from kb_base.errors import InvalidInputError

router = APIRouter(prefix="/v1/projects/{project_key}/knowledge-banks", tags=["knowledge banks"],
                   route_class=OrjsonRoute)


def _out(project_key: str, kb_id: str, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {"id": kb_id, "name": name, "project_key": project_key,
            "vector_store_type": settings["vector_store_type"], "embedding_llm_id": settings["embedding_llm_id"]}


@router.get("", response_model=list[KnowledgeBankOut])
def list_knowledge_banks(project_key: str, client: EmbeddedClient = Depends(get_client),
                         _: Principal = Depends(require("reader"))) -> list[dict]:
    client.catalog.project(project_key)
    return [_out(project_key, i["id"], i["name"], i["settings"]) for i in client.catalog.knowledge_banks(project_key)]


@router.post("", response_model=KnowledgeBankOut, status_code=201)
def create_knowledge_bank(project_key: str, body: KnowledgeBankIn, request: Request,
                          client: EmbeddedClient = Depends(get_client),
                          _: Principal = Depends(require("admin"))) -> dict:
    check_search_settings(client, body.settings, request.app.state.settings.max_k)
    handle = client.get_project(project_key).create_knowledge_bank(
        body.name, embedding_llm_id=body.embedding_llm_id, vector_store_type=body.vector_store_type,
        settings=body.settings)
    info = client.catalog.knowledge_bank(project_key, handle.id)
    return _out(project_key, handle.id, info["name"], info["settings"])


@router.get("/{kb_id}", response_model=KnowledgeBankOut)
def get_knowledge_bank(project_key: str, kb_id: str, client: EmbeddedClient = Depends(get_client),
                       _: Principal = Depends(require("reader"))) -> dict:
    info = client.catalog.knowledge_bank(project_key, kb_id)
    return _out(project_key, kb_id, info["name"], info["settings"])


@router.delete("/{kb_id}", status_code=204)
def delete_knowledge_bank(project_key: str, kb_id: str, client: EmbeddedClient = Depends(get_client),
                          _: Principal = Depends(require("admin"))) -> Response:
    client.get_project(project_key).get_knowledge_bank(kb_id).delete()
    return Response(status_code=204)


@router.get("/{kb_id}/settings", response_model=SettingsBody)
def get_settings(project_key: str, kb_id: str, client: EmbeddedClient = Depends(get_client),
                 _: Principal = Depends(require("reader"))) -> dict:
    return _masked(client.get_project(project_key).get_knowledge_bank(kb_id).get_settings().get_raw())


def _masked(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: (mask_secrets(v) if isinstance(v, dict) else v) for k, v in raw.items()}


def _has_masked_secret(value: Any) -> bool:
    if isinstance(value, dict):
        return any(v == "***" or _has_masked_secret(v) for v in value.values())
    if isinstance(value, str):
        return ":***@" in value  # a URL whose password was masked
    return isinstance(value, list) and any(_has_masked_secret(v) for v in value)


def _refuse_masked_secrets(raw: dict[str, Any]) -> None:
    # masked secrets sit inside sections, at any depth (kb.client.mask_secrets); a top-level "***" is no secret
    if any(_has_masked_secret(section) for section in raw.values() if isinstance(section, dict)):
        raise InvalidInputError("settings contain a masked secret ('***'): send the real value or leave the key out")


@router.put("/{kb_id}/settings", response_model=SettingsBody,
            summary="Replace the settings (metadata schema, images folder, store, search, ...)")
def put_settings(project_key: str, kb_id: str, body: SettingsBody, request: Request,
                 client: EmbeddedClient = Depends(get_client), _: Principal = Depends(require("admin"))) -> dict:
    settings = client.get_project(project_key).get_knowledge_bank(kb_id).get_settings()
    raw = body.model_dump()
    _refuse_masked_secrets(raw)
    check_search_settings(client, raw, request.app.state.settings.max_k)
    settings.get_raw().clear()
    settings.get_raw().update(raw)
    settings.set_metadata_schema(raw.get("metadata_schema") or {})
    settings.save()
    return _masked(client.get_project(project_key).get_knowledge_bank(kb_id).get_settings().get_raw())


@router.patch("/{kb_id}/settings", response_model=SettingsBody,
              summary="Change some settings: each top-level key given replaces the stored one, the rest is kept")
def patch_settings(project_key: str, kb_id: str, body: SettingsPatch, request: Request,
                   client: EmbeddedClient = Depends(get_client), _: Principal = Depends(require("admin"))) -> dict:
    """What the console's settings form sends: only the sections it edits, so a secret elsewhere in the settings
    (masked as ``***`` when read) never has to travel back. ``null`` resets a section (``images_folder``:
    unset; ``metadata_schema``, ``search``, ``store``, ``keyword``: empty). Checked as a whole, as the Python
    API's ``settings.save()`` checks it (a FAISS index type or an embedding model cannot change on a non-empty
    knowledge bank), plus the search settings; a refused change leaves every setting as it was."""
    handle = client.get_project(project_key).get_knowledge_bank(kb_id)
    settings = handle.get_settings()
    changes = body.model_dump(exclude_unset=True)
    _refuse_masked_secrets(changes)
    for section in ("metadata_schema", "search", "store", "keyword"):
        if section in changes and changes[section] is None:
            changes[section] = {}
    for required in ("embedding_llm_id", "vector_store_type"):
        if required in changes and changes[required] is None:
            raise InvalidInputError(f"{required} cannot be unset")
    raw = settings.get_raw()
    raw.update(changes)
    check_search_settings(client, raw, request.app.state.settings.max_k)
    settings.set_metadata_schema(raw.get("metadata_schema") or {})
    settings.save()
    return _masked(handle.get_settings().get_raw())
