"""The emulator's search engine: indexes held in memory, BM25, exact cosine kNN, RRF and a semantic step.

Deliberate simplifications (the README lists them): full text is a plain BM25 (k1=1.2, b=0.75) over
lower-cased word tokens, without Lucene analyzers, stemming, phrase or wildcard syntax; vector search is
exact (every HNSW query behaves as ``exhaustive``); hybrid fuses the text ranking and each vector query's
ranking with reciprocal rank fusion (constant 60), as the service documents; the semantic step reranks the
first 50 results with a local reranker and builds extractive captions and answers from the best sentence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.azure_search.odata import ODataError, compile_filter

Reranker = Callable[[str, list[str]], list[float]]
_WORD = re.compile(r"\w+")
_KEY = re.compile(r"^[A-Za-z0-9_\-=]{1,1024}$")
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_SENTENCE = re.compile(r"[^.!?]+[.!?]?")
RRF_CONSTANT = 60
SEMANTIC_WINDOW = 50


class ServiceError(Exception):
    """An error the service would answer with: HTTP status, OData error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def overlap_reranker(query: str, texts: list[str]) -> list[float]:
    """The default local reranker: the share of query terms a text contains, scaled to the service's 0-4."""
    terms = set(words(query))
    return [4.0 * len(terms & set(words(t))) / (len(terms) or 1) for t in texts]


@dataclass
class Index:
    definition: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    etag: int = 1

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in self.definition["fields"]}

    @property
    def key_field(self) -> str:
        return next(f["name"] for f in self.definition["fields"] if f.get("key"))

    def public(self) -> dict[str, Any]:
        return {**self.definition, "@odata.etag": f'"0x{self.etag:X}"'}


def check_definition(definition: Mapping[str, Any], current: Index | None) -> None:
    fields = definition.get("fields")
    if not isinstance(fields, list) or not fields:
        raise ServiceError(400, "InvalidRequestParameter", "The request is invalid. Details: index : An index must "
                           "have at least one field.")
    names = [f.get("name") for f in fields]
    for name in names:
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise ServiceError(400, "InvalidRequestParameter", f"Invalid field name '{name}'.")
    if len(set(names)) != len(names):
        raise ServiceError(400, "InvalidRequestParameter", "Field names must be unique.")
    keys = [f for f in fields if f.get("key")]
    if len(keys) != 1 or keys[0].get("type") != "Edm.String":
        raise ServiceError(400, "InvalidRequestParameter", "An index must have exactly one key field of type "
                           "Edm.String.")
    profiles = {p["name"]: p for p in (definition.get("vectorSearch") or {}).get("profiles") or []}
    algorithms = {a["name"] for a in (definition.get("vectorSearch") or {}).get("algorithms") or []}
    for spec in fields:
        if spec.get("type") == "Collection(Edm.Single)":
            dims = spec.get("dimensions")
            if not isinstance(dims, int) or not 2 <= dims <= 4096:
                raise ServiceError(400, "InvalidRequestParameter",
                                   f"Vector field '{spec['name']}' needs dimensions between 2 and 4096.")
            profile = profiles.get(spec.get("vectorSearchProfile"))
            if profile is None or profile.get("algorithm") not in algorithms:
                raise ServiceError(400, "InvalidRequestParameter",
                                   f"Vector field '{spec['name']}' names an unknown vector search profile.")
    semantic = definition.get("semantic") or {}
    for config in semantic.get("configurations") or []:
        prioritized = config.get("prioritizedFields") or {}
        for ref in [*(prioritized.get("prioritizedContentFields") or []),
                    *(prioritized.get("prioritizedKeywordsFields") or [])]:
            if ref.get("fieldName") not in names:
                raise ServiceError(400, "InvalidRequestParameter", f"Semantic configuration '{config.get('name')}' "
                                   f"names unknown field '{ref.get('fieldName')}'.")
    if current is not None:
        old = current.fields
        new = {f["name"]: f for f in fields}
        for name, spec in old.items():
            changed = name not in new or any(new[name].get(a) != spec.get(a) for a in ("type", "key", "dimensions"))
            if changed:
                raise ServiceError(400, "OperationNotAllowed", f"Existing field '{name}' cannot be changed or "
                                   "removed. Only new fields can be added to an existing index.")


def _check_value(spec: dict[str, Any], value: Any) -> None:
    if value is None:
        return
    kind = spec["type"]
    ok = {"Edm.String": isinstance(value, str), "Edm.Boolean": isinstance(value, bool),
          "Edm.Int32": isinstance(value, int) and not isinstance(value, bool),
          "Edm.Int64": isinstance(value, int) and not isinstance(value, bool),
          "Edm.Double": isinstance(value, int | float) and not isinstance(value, bool)}.get(kind)
    if kind == "Collection(Edm.Single)":
        ok = isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if ok and len(value) != spec["dimensions"]:
            raise ServiceError(400, "InvalidDocument", f"The vector field '{spec['name']}' must have dimension "
                               f"{spec['dimensions']}, but has dimension {len(value)}.")
    if ok is False:
        raise ServiceError(400, "InvalidDocument", f"Cannot convert the value of field '{spec['name']}' to {kind}.")


def index_batch(index: Index, actions: list[dict[str, Any]], failing: set[int]) -> list[dict[str, Any]]:
    """Apply a batch; ``failing`` are positions the fault injector makes fail with 503 (not applied)."""
    fields, key_name = index.fields, index.key_field
    for action in actions:  # a malformed document fails the whole request, as on the service
        for name, value in action.items():
            if name == "@search.action":
                continue
            if name not in fields:
                raise ServiceError(400, "InvalidDocument", f"The property '{name}' does not exist on type "
                                   "'search.documentFields'. Make sure to only use property names that are "
                                   "defined by the type.")
            _check_value(fields[name], value)
        if not isinstance(action.get(key_name), str):
            raise ServiceError(400, "InvalidDocument", f"The key field '{key_name}' is missing.")
    results = []
    for position, action in enumerate(actions):
        key = action[key_name]
        kind = action.get("@search.action", "upload")
        doc = {k: v for k, v in action.items() if k != "@search.action"}
        if not _KEY.match(key):
            results.append({"key": key, "status": False, "statusCode": 400, "errorMessage": "Invalid document key: "
                            f"'{key}'. Keys can only contain letters, digits, underscore (_), dash (-), or equal "
                            "sign (=)."})
            continue
        if position in failing:
            results.append({"key": key, "status": False, "statusCode": 503,
                            "errorMessage": "Service is too busy to process the document. Please try again later."})
            continue
        exists = key in index.docs
        if kind == "delete":
            index.docs.pop(key, None)
            results.append({"key": key, "status": True, "statusCode": 200})
        elif kind == "upload":
            index.docs[key] = doc
            results.append({"key": key, "status": True, "statusCode": 200 if exists else 201})
        elif kind in ("merge", "mergeOrUpload"):
            if not exists and kind == "merge":
                results.append({"key": key, "status": False, "statusCode": 404,
                                "errorMessage": "Document not found."})
                continue
            index.docs[key] = {**index.docs.get(key, {}), **doc}
            results.append({"key": key, "status": True, "statusCode": 200 if exists else 201})
        else:
            raise ServiceError(400, "InvalidRequestParameter", f"Unknown action '{kind}'.")
    return results


def project(index: Index, doc: dict[str, Any], select: str | list[str] | None) -> dict[str, Any]:
    if isinstance(select, str):
        select = [s.strip() for s in select.split(",") if s.strip()]
    fields = index.fields
    names = select or [n for n, f in fields.items() if f.get("retrievable", True) and f.get("stored", True)]
    for name in names:
        if name not in fields:
            raise ServiceError(400, "InvalidRequestParameter", f"Invalid expression: Could not find a property "
                               f"named '{name}' on type 'search.document'.")
    return {n: doc[n] for n in names if n in doc and doc[n] is not None}


def _bm25(index: Index, candidates: list[str], query: str, search_fields: list[str], mode: str) -> dict[str, float]:
    terms = [t for t in words(query) if t]
    if not terms:
        return {}
    texts = {k: words(" ".join(str(index.docs[k].get(f) or "") for f in search_fields)) for k in index.docs}
    n = len(texts) or 1
    average = sum(len(t) for t in texts.values()) / n or 1.0
    frequency = {t: sum(1 for ws in texts.values() if t in ws) for t in set(terms)}
    scores: dict[str, float] = {}
    for key in candidates:
        doc_words = texts[key]
        present = [t for t in set(terms) if t in doc_words]
        if not present or (mode == "all" and len(present) != len(set(terms))):
            continue
        score = 0.0
        for term in present:
            tf = doc_words.count(term)
            idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(doc_words) / average))
        scores[key] = score
    return scores


def _vector_hits(index: Index, candidates: list[str], query: dict[str, Any]) -> list[tuple[str, float]]:
    fields = index.fields
    names = [n.strip() for n in str(query.get("fields", "")).split(",") if n.strip()]
    if not names or any(fields.get(n, {}).get("type") != "Collection(Edm.Single)" for n in names):
        raise ServiceError(400, "InvalidRequestParameter", f"The field(s) '{query.get('fields')}' in the vector "
                           "query are not vector fields of this index.")
    if query.get("kind") != "vector":
        raise ServiceError(400, "InvalidRequestParameter", f"Unsupported vector query kind '{query.get('kind')}'.")
    vector = [float(v) for v in query["vector"]]
    norm = math.sqrt(sum(v * v for v in vector))
    hits: dict[str, float] = {}
    for name in names:
        if len(vector) != fields[name]["dimensions"]:
            raise ServiceError(400, "InvalidRequestParameter", f"The vector query's dimensions {len(vector)} do not "
                               f"match field '{name}' dimensions {fields[name]['dimensions']}.")
        for key in candidates:
            other = index.docs[key].get(name)
            if not other:
                continue
            other_norm = math.sqrt(sum(v * v for v in other))
            cosine = sum(a * b for a, b in zip(vector, other, strict=True)) / ((norm * other_norm) or 1.0)
            score = 1.0 / (2.0 - cosine)  # the service's cosine score: 1 / (1 + cosine distance)
            hits[key] = max(hits.get(key, 0.0), score)
    k = int(query.get("k") or 50)
    return sorted(hits.items(), key=lambda item: (-item[1], item[0]))[:k]


def _order(index: Index, keys: list[str], orderby: str) -> list[str]:
    clauses = [c.split() for c in orderby.split(",") if c.strip()]
    for parts in reversed(clauses):
        name, direction = parts[0], (parts[1].lower() if len(parts) > 1 else "asc")
        if not index.fields.get(name, {}).get("sortable", False):
            raise ServiceError(400, "InvalidRequestParameter", f"The field '{name}' is not sortable.")
        present = [k for k in keys if index.docs[k].get(name) is not None]
        missing = [k for k in keys if index.docs[k].get(name) is None]
        present.sort(key=lambda k: index.docs[k][name], reverse=direction == "desc")
        keys = present + missing  # nulls last either way (a simplification: kb sorts only on kb_id, never null)
    return keys


def _best_sentence(query: str, text: str) -> tuple[str, str, float]:
    terms = set(words(query))
    best, best_score = text.strip()[:200], 0.0
    for sentence in _SENTENCE.findall(text):
        score = len(terms & set(words(sentence))) / (len(terms) or 1)
        if score > best_score:
            best, best_score = sentence.strip(), score
    highlighted = re.sub(r"\w+", lambda m: f"<em>{m[0]}</em>" if m[0].lower() in terms else m[0], best)
    return best, highlighted, best_score


def search(index: Index, body: dict[str, Any], reranker: Reranker) -> dict[str, Any]:
    fields = index.fields
    try:
        predicate = compile_filter(body.get("filter"), fields)
    except ODataError as exc:
        raise ServiceError(400, "InvalidRequestParameter", str(exc)) from exc
    candidates = sorted(k for k, d in index.docs.items() if predicate(d))
    text = body.get("search")
    searchable = [n for n, f in fields.items() if f.get("searchable") and f["type"] == "Edm.String"]
    search_fields = [s.strip() for s in (body.get("searchFields") or "").split(",") if s.strip()] or searchable
    for name in search_fields:
        if name not in searchable:
            raise ServiceError(400, "InvalidRequestParameter", f"The field '{name}' is not searchable.")
    rankings: list[list[str]] = []
    base_scores: dict[str, float] = {}
    has_text = text is not None and text.strip() not in ("", "*")
    vector_queries = body.get("vectorQueries") or []
    if has_text:
        scores = _bm25(index, candidates, text, search_fields, body.get("searchMode", "any"))
        ranked = sorted(scores, key=lambda k: (-scores[k], k))
        rankings.append(ranked)
        base_scores = scores
    for query in vector_queries:
        hits = _vector_hits(index, candidates, query)
        rankings.append([k for k, _ in hits])
        base_scores = dict(hits) if not has_text and len(vector_queries) == 1 else base_scores
    if len(rankings) > 1:  # hybrid or several vector queries: reciprocal rank fusion
        fused: dict[str, float] = {}
        for ranking in rankings:
            for rank, key in enumerate(ranking, start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_CONSTANT + rank)
        base_scores = fused
        ordered = sorted(fused, key=lambda k: (-fused[k], k))
    elif rankings:
        ordered = rankings[0]
    else:  # no text and no vectors: every match, score 1
        ordered, base_scores = candidates, dict.fromkeys(candidates, 1.0)
    if body.get("orderby"):
        ordered = _order(index, ordered, body["orderby"])
    total = len(ordered)
    semantic = body.get("queryType") == "semantic"
    reranker_scores: dict[str, float] = {}
    captions: dict[str, tuple[str, str, float]] = {}
    answers: list[dict[str, Any]] = []
    if semantic:
        ordered, reranker_scores, captions, answers = _semantic(index, body, ordered, reranker)
    skip, top = int(body.get("skip") or 0), int(body["top"]) if body.get("top") is not None else 50
    if skip > 100_000 or top < 0:
        raise ServiceError(400, "InvalidRequestParameter", "skip must be at most 100000 and top not negative.")
    page = ordered[skip : skip + top]
    value = []
    for key in page:
        item = {"@search.score": float(base_scores.get(key, 1.0)),
                **project(index, index.docs[key], body.get("select"))}
        if semantic:
            item["@search.rerankerScore"] = reranker_scores.get(key, 0.0)
            if key in captions and (body.get("captions") or "none").split("|")[0] == "extractive":
                caption, highlights, _ = captions[key]
                item["@search.captions"] = [{"text": caption, "highlights": highlights}]
        value.append(item)
    out: dict[str, Any] = {"value": value}
    if body.get("count"):
        out["@odata.count"] = total
    if semantic and (body.get("answers") or "none").split("|")[0] == "extractive":
        out["@search.answers"] = answers
    return out


def _semantic(index: Index, body: dict[str, Any], ordered: list[str], reranker: Reranker
              ) -> tuple[list[str], dict[str, float], dict[str, tuple[str, str, float]], list[dict[str, Any]]]:
    configs = {c["name"]: c for c in ((index.definition.get("semantic") or {}).get("configurations") or [])}
    name = body.get("semanticConfiguration") or (index.definition.get("semantic") or {}).get("defaultConfiguration")
    if name not in configs:
        raise ServiceError(400, "InvalidRequestParameter", f"Unknown semantic configuration '{name}'.")
    prioritized = configs[name].get("prioritizedFields") or {}
    content = [f["fieldName"] for f in prioritized.get("prioritizedContentFields") or []]
    title = (prioritized.get("titleField") or {}).get("fieldName")
    query = body.get("semanticQuery") or body.get("search") or ""
    window = ordered[:SEMANTIC_WINDOW]
    texts = [" ".join(str(index.docs[k].get(f) or "") for f in [*([title] if title else []), *content])
             for k in window]
    scores = dict(zip(window, reranker(query, texts), strict=True)) if window else {}
    reranked = sorted(window, key=lambda k: -scores[k]) + ordered[SEMANTIC_WINDOW:]
    captions = {k: _best_sentence(query, t) for k, t in zip(window, texts, strict=True)}
    options = dict(part.split("-", 1) for part in (body.get("answers") or "none").split("|")[1:] if "-" in part)
    count, threshold = int(options.get("count", 1)), float(options.get("threshold", 0.7))
    answers = [{"key": k, "text": captions[k][0], "highlights": captions[k][1], "score": captions[k][2]}
               for k in reranked[:count * 3] if k in captions and captions[k][2] >= threshold]
    return reranked, scores, captions, sorted(answers, key=lambda a: -a["score"])[:count]
