"""OpenAI-compatible ``POST /v1/embeddings`` over kb's embedding models (model = kb model id)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends, Request

from api.deps import get_client, get_principal
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import OpenAIEmbeddingsIn
from kb.client import EmbeddedClient
from kb_base.errors import InvalidInputError

router = APIRouter(tags=["openai-compatible"], route_class=OrjsonRoute)


@router.post("/v1/embeddings", summary="OpenAI-compatible embeddings")
def embeddings(body: OpenAIEmbeddingsIn, request: Request, client: EmbeddedClient = Depends(get_client),
               _: Principal = Depends(get_principal)) -> dict:
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise InvalidInputError("input must not be empty")
    if len(inputs) > request.app.state.settings.max_batch:
        raise InvalidInputError(f"at most {request.app.state.settings.max_batch} inputs per request")
    handle = client.get_llm_handle(body.model)
    vectors = handle.embedder.embed_documents(inputs)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise InvalidInputError(f"model {body.model} produces {vectors.shape[1]} dimensions, not {body.dimensions}")
    tokens = sum(len(t.split()) for t in inputs)

    def encode(vector: np.ndarray) -> list[float] | str:
        # the openai client asks for base64: little-endian float32 bytes, as OpenAI sends them
        if body.encoding_format == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return vector.tolist()

    return {"object": "list", "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
