"""Embedding models ("LLMs" with purpose TEXT_EMBEDDING_EXTRACTION) of a project."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.deps import get_client, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import EmbedIn, EmbedOut, LLMOut
from kb.client import EmbeddedClient
from kb_base.errors import InvalidInputError

router = APIRouter(prefix="/v1/projects/{project_key}/llms", tags=["embedding models"],
                   route_class=OrjsonRoute)


@router.get("", response_model=list[LLMOut])
def list_llms(project_key: str, purpose: str | None = None, client: EmbeddedClient = Depends(get_client),
              _: Principal = Depends(require("reader"))) -> list[dict]:
    return [item.to_dict() for item in client.get_project(project_key).list_llms(purpose=purpose)]


@router.post("/{llm_id}/embeddings", response_model=EmbedOut, summary="Embed texts with a model")
def embed(project_key: str, llm_id: str, body: EmbedIn, request: Request,
          client: EmbeddedClient = Depends(get_client), _: Principal = Depends(require("reader"))) -> dict:
    if len(body.texts) > request.app.state.settings.max_batch:
        raise InvalidInputError(f"at most {request.app.state.settings.max_batch} texts per request")
    query = client.get_project(project_key).get_llm(llm_id).new_embeddings()
    for text in body.texts:
        query.add_text(text)
    return {"embeddings": query.execute().get_embeddings()}
