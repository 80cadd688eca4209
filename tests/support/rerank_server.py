"""A /rerank endpoint for tests (Cohere/Jina/TEI request shape), scoring by query-term overlap."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

app = FastAPI()


def overlap(query: str, document: str) -> float:
    terms = set(re.findall(r"\w+", query.lower()))
    words = re.findall(r"\w+", document.lower())
    return sum(w in terms for w in words) / (len(words) or 1)


@app.post("/v1/rerank")
async def rerank(body: dict[str, Any]) -> dict[str, Any]:
    scores = [overlap(body["query"], d) for d in body["documents"]]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.get("top_n", len(scores))]
    return {"model": body.get("model"), "results": [{"index": i, "relevance_score": scores[i]} for i in order]}
