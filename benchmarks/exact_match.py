"""Exact-match retrieval: can hybrid search find the one page that holds a code, an error name or a function name?

    python -m benchmarks.exact_match [--stores faiss,chroma] [--es-url URL] [--azure-endpoint URL --azure-key KEY]
                                     [--out bench-results/exact-match.json]

The corpus is generated (fixed seed): ~1,000 look-alike pages of a product manual, as a PDF's pages would be
chunked, each defining one unique identifier: a fault code (``K0731``), an error name
(``ERR_QUOTA_EXCEEDED_7``) or a function name (``parse_invoice_v3``). Pages of a kind share one template and
small word pools, so the text around the identifier says little; about a third of the pages also mention a
neighbour's identifier ("see also ..."), so some keyword lists hold two or three matches and the defining page
must still win. Queries are the identifier alone and inside a question ("what is code K0731?").

For each store and fusion setting it reports how often the defining page is first and in the top 5, with
keyword search as the reference. The embeddings are the real all-MiniLM-L6-v2, computed once and written to
every store. ``tests/test_exact_match.py`` asserts the targets at the defaults on FAISS and embedded Chroma.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kb
from benchmarks.results import write_results
from kb.fusion import NORMALISATIONS
from kb_base.search import SearchRequest

MODEL = "local:all-MiniLM-L6-v2"

_SUBSYSTEMS = ["pump controller", "inlet valve", "cooling fan", "pressure sensor", "drive motor", "heater element"]
_SYMPTOMS = ["reports low pressure", "stops after start-up", "runs above its rated temperature",
             "draws more current than expected", "loses its calibration", "does not respond to commands"]
_ACTIONS = ["check the filter housing", "reseat the sensor connector", "restart the unit",
            "inspect the wiring harness", "clean the intake grille", "update the controller firmware"]
_REASONS = ["the account exceeded its quota", "the token has expired", "the payload is too large",
            "the upstream service timed out", "the request was malformed", "the resource is locked"]
_ERROR_STEMS = ["ERR_QUOTA_EXCEEDED", "ERR_TOKEN_EXPIRED", "ERR_PAYLOAD_TOO_LARGE", "ERR_UPSTREAM_TIMEOUT",
                "ERR_BAD_REQUEST", "ERR_RESOURCE_LOCKED", "ERR_RATE_LIMITED", "ERR_NOT_FOUND"]
_VERBS = ["parse", "validate", "export", "render", "archive", "merge", "load", "sign"]
_NOUNS = ["invoice", "order", "receipt", "ledger", "shipment", "contract", "payment", "report"]
_RETURNS = ["a dictionary of fields", "a list of line items", "the record's new id", "a status object"]
_REMEDIES = ["reduce the batch size", "renew the token", "ask an administrator", "split the upload"]
_HANDLING = ["checks", "converts", "copies", "signs"]
_RAISES = ["a field is missing", "the currency is unknown", "the date is malformed", "the total does not match"]


@dataclass(frozen=True)
class Page:
    id: str
    identifier: str
    kind: str  # "code", "error" or "function"
    text: str


def _identifiers(rng: random.Random, pages: int) -> list[tuple[str, str]]:
    codes: set[str] = set()
    while len(codes) < pages * 4 // 10:
        codes.add(f"{rng.choice('ABCDEFHKLMPRSTW')}{rng.randrange(10_000):04d}")
    errors = [f"{stem}_{n}" for stem in _ERROR_STEMS for n in range(1, 60)]
    functions = [f"{verb}_{noun}_v{n}" for verb in _VERBS for noun in _NOUNS for n in range(1, 9)]
    rng.shuffle(errors)
    rng.shuffle(functions)
    n_errors = pages * 3 // 10
    out = [(c, "code") for c in sorted(codes)] + [(e, "error") for e in errors[:n_errors]]
    out += [(f, "function") for f in functions[: pages - len(out)]]
    rng.shuffle(out)
    return out


def _text(rng: random.Random, identifier: str, kind: str, page: int, see_also: str | None) -> str:
    c = rng.choice
    if kind == "code":
        text = (f"Fault code {identifier}. The {c(_SUBSYSTEMS)} {c(_SYMPTOMS)}. The controller logs {identifier} "
                f"when the condition lasts more than {rng.randint(2, 30)} seconds. To clear the fault, "
                f"{c(_ACTIONS)}, then {c(_ACTIONS)}. If the fault returns within {rng.randint(2, 48)} hours, "
                "contact service and quote the fault code.")
    elif kind == "error":
        text = (f"Error {identifier}. The request was rejected because {c(_REASONS)}. Clients receive HTTP "
                f"{c([400, 403, 409, 413, 429, 503])} with {identifier} in the response body. Retry after "
                f"{rng.randint(1, 120)} seconds, or {c(_REMEDIES)}.")
    else:
        text = (f"Function {identifier}(record, options). It reads a record, {c(_HANDLING)} "
                f"its fields and returns {c(_RETURNS)}. Raises ValueError when {c(_RAISES)}. "
                f"Added in release {rng.randint(1, 9)}.{rng.randint(0, 20)}.")
    if see_also:
        text += f" See also {see_also}."
    return f"Manual, page {page}. {text}"


def corpus(pages: int = 1000, seed: int = 7) -> list[Page]:
    """Look-alike pages, one identifier each; about a third mention a neighbour of the same kind."""
    rng = random.Random(seed)
    identifiers = _identifiers(rng, pages)
    by_kind: dict[str, list[str]] = {}
    for identifier, kind in identifiers:
        by_kind.setdefault(kind, []).append(identifier)
    out = []
    for number, (identifier, kind) in enumerate(identifiers, start=1):
        see_also = rng.choice(by_kind[kind]) if rng.random() < 0.33 else None
        see_also = None if see_also == identifier else see_also
        out.append(Page(f"page-{number:04d}", identifier, kind, _text(rng, identifier, kind, number, see_also)))
    return out


_QUESTIONS = {
    "code": ["what is code {}?", "what does fault code {} mean?", "how do I clear fault {}?"],
    "error": ["what does {} mean?", "why do I get {}?", "how do I fix error {}?"],
    "function": ["what does {} return?", "how do I call {}?", "when does {} raise an error?"],
}


def queries(pages: list[Page], count: int = 60, seed: int = 11) -> list[tuple[str, str]]:
    """(query, id of the defining page): ``count`` identifiers, each bare and inside a question."""
    rng = random.Random(seed)
    out = []
    for page in rng.sample(pages, count):
        out.append((page.identifier, page.id))
        out.append((rng.choice(_QUESTIONS[page.kind]).format(page.identifier), page.id))
    return out


# Each linear normalisation at its best dense weight on SciFact train (benchmarks/scifact.py --sweep); z-score
# at 0.4 was the default before bounded.
TUNED_WEIGHTS = {"bounded": 0.8, "minmax": 0.4, "zscore": 0.4, "dbsf": 0.4}


def settings_to_compare() -> dict[str, dict[str, Any]]:
    """The default, then RRF and every normalisation at its tuned weight (Azure AI Search takes only the default)."""
    out: dict[str, dict[str, Any]] = {"default": {}, "rrf": {"fusion": "rrf"}}
    for normalisation in NORMALISATIONS:
        weight = TUNED_WEIGHTS[normalisation]
        out[f"{normalisation} {weight}"] = {"fusion": "linear", "normalisation": normalisation,
                                            "fusion_weight": weight}
    return out


def rates(core: Any, cases: list[tuple[str, str]], search_type: str = "hybrid",
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """How often the defining page is first and in the top 5, and the queries that missed the top 5."""
    first = top5 = 0
    missed = []
    for query, expected in cases:
        ids = [r.id for r in core.search(SearchRequest(query=query, k=5, search_type=search_type, **(options or {})))]
        first += bool(ids) and ids[0] == expected
        top5 += expected in ids
        if expected not in ids:
            missed.append(query)
    n = len(cases)
    return {"queries": n, "first": first, "top5": top5, "first_rate": round(first / n, 4),
            "top5_rate": round(top5 / n, 4), "missed_top5": missed[:10]}


def build(client: Any, name: str, pages: list[Page], vectors: list[list[float]], store: str,
          settings: dict[str, Any] | None = None) -> Any:
    handle = client.get_default_project().create_knowledge_bank(name, embedding_llm_id=MODEL,
                                                                vector_store_type=store, settings=settings or {})
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        core.write_texts([p.text for p in pages], [{"kind": p.kind} for p in pages], [p.id for p in pages],
                         vectors=vectors, tx=writer.transaction)
    return core


def embed(client: Any, pages: list[Page], cases: list[tuple[str, str]]) -> list[list[float]]:
    embedder = client.get_llm_handle(MODEL).embedder
    vectors = embedder.embed_documents([p.text for p in pages])
    embedder.embed_documents([q for q, _ in cases])  # into the embedding cache: searches then only look up
    return vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="exact-match retrieval on look-alike pages")
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--identifiers", type=int, default=60, help="identifiers queried (each bare and in a question)")
    parser.add_argument("--stores", default="faiss,chroma", help="embedded stores: faiss, chroma")
    parser.add_argument("--es-url", help="also measure an Elasticsearch node at this URL")
    parser.add_argument("--azure-endpoint", help="also measure Azure AI Search (or its emulator) at this endpoint")
    parser.add_argument("--azure-key", default=os.environ.get("KB_AZURE_KEY", ""))
    parser.add_argument("--out", type=Path, default=Path("bench-results/exact-match.json"))
    args = parser.parse_args(argv)
    pages = corpus(args.pages)
    cases = queries(pages, args.identifiers)
    report: dict[str, Any] = {"pages": len(pages), "queries": len(cases), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform()}, "stores": {}}
    with tempfile.TemporaryDirectory() as tmp:
        client = kb.api_client(home=Path(tmp) / "home")
        started = time.perf_counter()
        vectors = embed(client, pages, cases)
        print(f"embedded {len(pages)} pages and {len(cases)} queries in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
        stores: dict[str, tuple[str, dict[str, Any]]] = {
            "faiss": ("FAISS", {}), "chroma": ("CHROMA", {})}
        wanted = [s for s in args.stores.split(",") if s]
        if args.es_url:
            client.create_connection("es", "elasticsearch", {"url": args.es_url, "index_prefix": "exact-"},
                                     replace=True)
            stores["elasticsearch"] = ("ELASTICSEARCH", {"connection": "es"})
            wanted.append("elasticsearch")
        if args.azure_endpoint:
            client.create_connection("az", "azure-ai-search", {"endpoint": args.azure_endpoint,
                                                               "api_key": args.azure_key, "index_prefix": "exact-"},
                                     replace=True)
            stores["azure"] = ("AZURE_AI_SEARCH", {"connection": "az"})
            wanted.append("azure")
        for store in wanted:
            store_type, settings = stores[store]
            started = time.perf_counter()
            core = build(client, f"exact-{store}", pages, vectors, store_type, settings)
            print(f"{store}: wrote {len(pages)} pages in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            figures = {"keyword": rates(core, cases, "keyword")}
            compared = {"default": {}} if store == "azure" else settings_to_compare()
            for name, options in compared.items():
                figures[f"hybrid {name}"] = rates(core, cases, "hybrid", options)
            report["stores"][store] = figures
            for name, figure in figures.items():
                print(f"  {store:<14} {name:<22} first {figure['first']:>3}/{figure['queries']}"
                      f"  top-5 {figure['top5']:>3}/{figure['queries']}")
        client.close()
    write_results(args.out, report)
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
