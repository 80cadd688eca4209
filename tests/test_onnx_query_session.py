"""The one-thread query session of the local model (``kb.onnx_sessions``): which calls run on it, that its
vectors are the pooled session's (int8 bit for bit, fp32 to 1e-6), that it is built only when needed, and
that one intra-op thread (``KB_ONNX_THREADS=1``) needs no second session."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kb import local_minilm
from kb.local_minilm import LOCAL_MINILM_DIMENSION, OnnxMiniLM
from kb.onnx_sessions import QUERY_MAX_TOKENS
from kb_base.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"

pytestmark = pytest.mark.slow

KINDS = ["int8", "fp32"]
SHORT_EDGE_TEXTS = ["", " \n\t ", "kb", "日本語のテキスト 🙂 émigré naïve ﬁ", "مرحبا بالعالم", "a\u0301\u200bb\u0000c",
                    "E0425", "ERR_CONNECTION_REFUSED", "SELECT * FROM orders;"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def runtimes(cache: Path) -> Callable[[str, int], OnnxMiniLM]:
    """One runtime per (kind, query_max_tokens), two intra-op threads: 0 turns the query session off."""
    made: dict[tuple[str, int], OnnxMiniLM] = {}

    def get(kind: str, query_max_tokens: int = QUERY_MAX_TOKENS) -> OnnxMiniLM:
        if (kind, query_max_tokens) not in made:
            made[kind, query_max_tokens] = OnnxMiniLM(local_minilm.model_dir(), cache, threads=2,
                                                      int8=kind == "int8", query_max_tokens=query_max_tokens)
        return made[kind, query_max_tokens]

    return get


def _scifact_queries() -> list[str]:
    return [json.loads(line)["text"] for line in (SCIFACT / "queries-train.jsonl").read_text().splitlines()]


def _tokens(runtime: OnnxMiniLM, text: str) -> int:
    return len(runtime.tokenizer.encode(text).ids)


def _text_of(runtime: OnnxMiniLM, tokens: int) -> str:
    """A text of exactly ``tokens`` tokens ([CLS] and [SEP] included): common words are one token each."""
    text = " ".join(["cell"] * (tokens - 2))
    assert _tokens(runtime, text) == tokens
    return text


class _RunCounter:
    """Counts the runs of each session of a runtime (the real sessions still run)."""

    def __init__(self, runtime: OnnxMiniLM, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        for name, session in (("pooled", runtime.session), ("query", runtime.sessions.query_session())):
            monkeypatch.setattr(session, "run", self._counting(name, session.run))

    def _counting(self, name: str, run: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return run(*args, **kwargs)

        return counted

    def take(self) -> dict[str, int]:
        counts = dict(self.counts)
        self.counts.clear()
        return counts


@pytest.mark.parametrize("kind", KINDS)
def test_the_session_follows_the_rule(runtimes: Callable[..., OnnxMiniLM], kind: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = runtimes(kind)
    runs = _RunCounter(runtime, monkeypatch)
    assert runtime.sessions.query_session().get_session_options().intra_op_num_threads == 1
    assert runtime.session.get_session_options().intra_op_num_threads == 2
    at_limit, past_limit = _text_of(runtime, QUERY_MAX_TOKENS), _text_of(runtime, QUERY_MAX_TOKENS + 1)
    runtime.embed([at_limit])
    assert runs.take() == {"query": 1}  # one text of at most QUERY_MAX_TOKENS tokens
    runtime.embed([past_limit])
    assert runs.take() == {"pooled": 1}  # one token more
    runtime.embed(["kb", "short"])
    assert runs.take() == ({"pooled": 2} if kind == "int8" else {"pooled": 1})  # int8 runs each text alone
    runtime.embed(["word " * 5000])  # truncated to 256 tokens: a document, not a query
    assert runs.take() == {"pooled": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_query_session_vectors_are_the_pooled_sessions(runtimes: Callable[..., OnnxMiniLM], kind: str) -> None:
    """SciFact's training queries (text users type) and short edge texts, alone: int8 bit for bit."""
    default, pooled = runtimes(kind), runtimes(kind, 0)
    texts = [*SHORT_EDGE_TEXTS, *_scifact_queries()[::2]]
    short = [t for t in texts if _tokens(default, t) <= QUERY_MAX_TOKENS]
    assert len(short) > 0.8 * len(texts)  # most queries take the query session
    ours = np.vstack([default.embed([t]) for t in short])
    theirs = np.vstack([pooled.embed([t]) for t in short])
    assert default.sessions.query_session_built and not pooled.sessions.query_session_built
    if kind == "int8":
        different = [t for t, a, b in zip(short, ours, theirs, strict=True) if not np.array_equal(a, b)]
        assert different == []
        # and the same as the text's vector inside a larger call (int8 runs every text alone on the pool)
        assert np.array_equal(default.embed(short[:16]), ours[:16])
    else:
        assert np.abs(ours - theirs).max() <= 1e-6
        assert np.allclose(default.embed(short[:16]), ours[:16], atol=1e-5)  # batched: padding, other sums
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_lone_texts_of_every_length_get_the_vectors_of_the_batch_path(runtimes: Callable[..., OnnxMiniLM]) -> None:
    """The lone-text path (``OnnxMiniLM._embed_one``: either session, a shared row of ones as the mask, the
    session's output returned as it is) against the batch path (int8 runs every text alone there too, padded
    to nothing): SciFact's training queries of every length (all of them with ``KB_SCIFACT_FULL=1``), edge
    texts and a text truncated to the model's 256 tokens, bit for bit."""
    runtime = runtimes("int8")
    queries = _scifact_queries()
    texts = [*SHORT_EDGE_TEXTS, "word " * 5000,
             *(queries if os.environ.get("KB_SCIFACT_FULL") == "1" else queries[1::4])]
    lengths = [_tokens(runtime, t) for t in texts]
    assert min(lengths) <= 3 and max(lengths) == runtime.max_length and sum(n > QUERY_MAX_TOKENS for n in lengths) > 5
    alone = [runtime.embed([t]) for t in texts]
    assert all(v.shape == (1, LOCAL_MINILM_DIMENSION) and v.dtype == np.float32 for v in alone)
    batched = runtime.embed(texts)
    different = [t for t, a, b in zip(texts, alone, batched, strict=True) if not np.array_equal(a[0], b)]
    assert different == []
    alone[0][0, 0] = 7.0  # each answer is its own array: writing to one changes no other answer
    assert np.array_equal(runtime.embed([texts[0]]), batched[:1])


def test_a_lone_invalid_text_is_refused_by_name(runtimes: Callable[..., OnnxMiniLM]) -> None:
    runtime = runtimes("int8")
    with pytest.raises(InvalidInputError, match=r"text 0 to embed is not valid Unicode: surrogates not allowed"):
        local_minilm.embed_safely(runtime, ["bad \ud800 text"])
    with pytest.raises(InvalidInputError, match=r"text 0 to embed is a int, not a string"):
        local_minilm.embed_safely(runtime, [42])  # type: ignore[list-item]


def test_a_short_lone_text_does_not_wait_for_a_run_in_progress(runtimes: Callable[..., OnnxMiniLM]) -> None:
    """A large call holds the run lock for all its texts (an ingestion: seconds); a query on the one-thread
    session runs beside it. A longer lone text runs on the pooled session, so it waits its turn."""
    runtime = runtimes("int8")
    short, longer = _text_of(runtime, QUERY_MAX_TOKENS), _text_of(runtime, QUERY_MAX_TOKENS + 1)
    expected = {text: runtime.embed([text]) for text in (short, longer)}
    got: dict[str, np.ndarray] = {}

    def embed(text: str) -> None:
        got[text] = runtime.embed([text])

    quick, waiting = threading.Thread(target=embed, args=(short,)), threading.Thread(target=embed, args=(longer,))
    with runtime._run_lock:  # what a call of many texts holds while it runs
        quick.start()
        quick.join(timeout=120)
        assert not quick.is_alive() and np.array_equal(got[short], expected[short])
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and longer not in got  # it cannot finish while the lock is held
    waiting.join(timeout=120)
    assert np.array_equal(got[longer], expected[longer])


def test_lone_queries_during_a_real_batch_get_their_own_vectors(runtimes: Callable[..., OnnxMiniLM]) -> None:
    runtime = runtimes("int8")
    documents = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()[:48]]
    abstracts = [d["title"] + " " + d["text"] for d in documents]
    queries = [q for q in _scifact_queries() if _tokens(runtime, q) <= QUERY_MAX_TOKENS][:30]
    alone = {q: runtime.embed([q]) for q in queries}
    batch_alone = runtime.embed(abstracts)
    answers: list[np.ndarray] = []
    ingest = threading.Thread(target=lambda: answers.append(runtime.embed(abstracts)))
    ingest.start()
    during: list[tuple[str, np.ndarray, bool]] = []
    while ingest.is_alive():
        for query in queries:
            during.append((query, runtime.embed([query]), ingest.is_alive()))
    ingest.join()
    assert any(in_flight for _, _, in_flight in during)  # at least one query was answered while the batch ran
    assert [q for q, vector, _ in during if not np.array_equal(vector, alone[q])] == []
    assert np.array_equal(answers[0], batch_alone)


def test_the_query_session_is_built_at_first_need_and_once(cache: Path) -> None:
    runtime = OnnxMiniLM(local_minilm.model_dir(), cache, threads=2, int8=True)
    runtime.embed(["a document much longer than a query " * 10])
    runtime.embed(["kb", "two short texts"])
    assert not runtime.sessions.query_session_built  # documents and several texts never need it
    sessions: list[Any] = []
    callers = [threading.Thread(target=lambda: sessions.append(runtime.sessions.query_session())) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(sessions) == 4 and all(s is sessions[0] for s in sessions)  # concurrent first calls: one session
    assert runtime.sessions.query_session() is sessions[0]


def test_one_onnx_thread_needs_no_query_session(runtimes: Callable[..., OnnxMiniLM], cache: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_ONNX_THREADS", "1")
    runtime = OnnxMiniLM(local_minilm.model_dir(), cache, int8=True)
    assert runtime.threads == 1 and runtime.sessions.query_max_tokens == 0
    runs = Counter[str]()
    run = runtime.session.run
    monkeypatch.setattr(runtime.session, "run", lambda *a, **k: runs.update(["pooled"]) or run(*a, **k))
    texts = ["Does aspirin reduce the risk of heart attacks?", *SHORT_EDGE_TEXTS[:4]]
    alone = np.vstack([runtime.embed([t]) for t in texts])
    assert runs == {"pooled": len(texts)} and not runtime.sessions.query_session_built
    # int8 vectors are the same whatever the thread count and whichever session ran them
    assert np.array_equal(alone, np.vstack([runtimes("int8").embed([t]) for t in texts]))


def test_only_the_int8_model_takes_the_query_session_by_default(cache: Path) -> None:
    """fp32 is no faster on it back to back and slower when queries are spaced out (docs/local-model.md)."""
    fp32 = OnnxMiniLM(local_minilm.model_dir(), cache, threads=2)
    int8 = OnnxMiniLM(local_minilm.model_dir(), cache, threads=2, int8=True)
    assert fp32.sessions.query_max_tokens == 0 and int8.sessions.query_max_tokens == QUERY_MAX_TOKENS
    fp32.embed(["Does aspirin reduce the risk of heart attacks?"])
    assert not fp32.sessions.query_session_built


@pytest.mark.parametrize("kind", KINDS)
def test_both_sessions_use_one_copy_of_the_graphs_word_embeddings(runtimes: Callable[..., OnnxMiniLM],
                                                                  kind: str) -> None:
    import onnx
    from onnx import numpy_helper

    runtime = runtimes(kind)
    shared = runtime.sessions.shared
    assert shared is not None and set(shared) == {"word_embeddings"}
    model = onnx.load(str(runtime.graph_path))
    in_graph = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "word_embeddings")
    assert np.array_equal(shared["word_embeddings"].numpy(), in_graph)  # the values the graph was built with
