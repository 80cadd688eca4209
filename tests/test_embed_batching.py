"""Dynamic batching of concurrent embedding calls (``kb.embed_batching``, used by the local fp32 model): who
shares a run, results equal to unbatched calls, one caller's failure kept to that caller, and the same through
a real ``kb serve`` with concurrent HTTP clients. Also: the local model's thread settings as applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from kb import local_minilm
from kb.embed_batching import EmbedBatcher
from kb.local_minilm import LOCAL_MINILM_ID, OnnxMiniLM, _groups
from tests.support.kb_serve import KBServe
from tests.support.server import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"


def _wait_until(condition, timeout: float = 60) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batcher's queue"
        time.sleep(0.005)


def _queries(count: int, skip: int = 0) -> list[str]:
    lines = (SCIFACT / "queries-train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[skip : skip + count]]


# --- the batcher's mechanics, on a recording function ---------------------------------------------------


class Recorder:
    """An embed function that records its batches, refuses texts containing 'bad', and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.release.wait(60)
        self.batches.append(list(texts))
        if any("bad" in t for t in texts):
            raise ValueError(f"refused {[t for t in texts if 'bad' in t]}")
        return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts], dtype=np.float32)


def _start_held(batcher: EmbedBatcher, recorder: Recorder, requests: list[list[str]]) -> tuple[list, list]:
    """A first call holds the model; ``requests`` queue behind it; then the model is released."""
    recorder.release.clear()
    pool = ThreadPoolExecutor(len(requests) + 1)
    first = pool.submit(batcher.embed, ["first"])
    _wait_until(lambda: batcher._running)
    futures = [pool.submit(batcher.embed, texts) for texts in requests]
    _wait_until(lambda: len(batcher._queue) == len(requests))
    recorder.release.set()
    pool.shutdown(wait=True)
    return [first], futures


def test_calls_that_wait_during_a_run_share_the_next_one() -> None:
    recorder = Recorder()
    batcher = EmbedBatcher(recorder, max_texts=64)
    requests = [[f"text {i}"] * (1 + i % 3) for i in range(7)]
    first, futures = _start_held(batcher, recorder, requests)
    assert first[0].result().shape == (1, 2)
    assert len(recorder.batches) == 2  # the held run, then one run for all seven waiting calls
    assert sorted(recorder.batches[1]) == sorted(t for texts in requests for t in texts)
    for texts, future in zip(requests, futures, strict=True):  # each caller gets its own rows, in its order
        assert np.array_equal(future.result(), recorder(texts))
    assert (batcher.runs, batcher.calls) == (2, 8)


def test_a_lone_call_runs_at_once_and_a_full_batch_leaves_the_rest_for_the_next_run() -> None:
    recorder = Recorder()
    batcher = EmbedBatcher(recorder, max_texts=4)
    assert np.array_equal(batcher.embed(["alone"]), recorder(["alone"]))
    recorder.batches.clear()
    requests = [[f"t{i}a", f"t{i}b"] for i in range(5)]
    _first, futures = _start_held(batcher, recorder, requests)
    assert [len(b) for b in recorder.batches] == [1, 4, 4, 2]  # at most max_texts per run, in arrival order
    assert recorder.batches[1] == requests[0] + requests[1]
    assert all(np.array_equal(f.result(), recorder(t)) for f, t in zip(futures, requests, strict=True))
    too_big = [f"big {i}" for i in range(9)]  # a call larger than max_texts still runs, alone
    assert batcher.embed(too_big).shape == (9, 2)


def test_one_callers_bad_input_fails_that_caller_only() -> None:
    recorder = Recorder()
    batcher = EmbedBatcher(recorder, max_texts=64)
    requests = [["good one"], ["a bad text", "fine"], ["good two", "good three"]]
    _first, futures = _start_held(batcher, recorder, requests)
    assert np.array_equal(futures[0].result(), recorder(["good one"]))
    with pytest.raises(ValueError, match="refused \\['a bad text'\\]"):
        futures[1].result()
    assert np.array_equal(futures[2].result(), recorder(["good two", "good three"]))
    # the shared run failed, then each call ran alone
    assert recorder.batches[1] == ["good one", "a bad text", "fine", "good two", "good three"]
    assert recorder.batches[2:5] == requests


def test_runs_are_split_where_padding_would_cost_more_than_a_run() -> None:
    assert _groups(np.array([16] * 8), 32) == [(0, 8)]  # equal lengths: one run
    assert _groups(np.array([200] * 5 + [20] * 5), 32) == [(0, 5), (5, 10)]  # long and short apart
    many = np.sort(np.random.default_rng(0).integers(5, 250, 100))[::-1]
    assert _groups(many, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]  # ingestion: every batch_size
    for lengths in (np.array([34, 30, 25, 24, 20, 18, 16, 12]), np.array([9] * 40)):
        ranges = _groups(lengths, 32)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(0 < last - first <= 32 for first, last in ranges)


# --- the real model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32() -> OnnxMiniLM:
    return OnnxMiniLM(local_minilm.model_dir(), local_minilm.model_cache_dir())


def test_batched_calls_of_the_real_model_equal_unbatched_ones(fp32: OnnxMiniLM) -> None:
    texts = _queries(40)
    requests = [texts[i : i + 1 + i % 4] for i in range(0, 36, 4)]  # 1-4 texts each, lengths mixed
    alone = [np.vstack([fp32._embed_now([t]) for t in r]) for r in requests]
    runs = fp32.batcher.runs
    with fp32._run_lock:  # the model busy: every call below queues, then they share runs
        pool = ThreadPoolExecutor(len(requests))
        futures = [pool.submit(fp32.embed, r) for r in requests]
        # one caller runs (waiting for the lock held here), the rest queue behind it
        _wait_until(lambda: len(fp32.batcher._queue) == len(requests) - 1)
    pool.shutdown(wait=True)
    assert fp32.batcher.runs - runs == 2
    for request, future, single in zip(requests, futures, alone, strict=True):
        got = future.result()
        assert got.shape == (len(request), 384)
        assert np.abs(got - single).max() <= 1e-6  # padding beside other texts changes sums by ~1e-7 only


def test_int8_calls_are_not_batched_across_callers() -> None:
    int8 = local_minilm.load(int8=True)
    # its activations share one scale per run, so each text runs alone: there is no run to share
    assert int8.batcher is None and int8.batch_size == 1


# --- through kb serve ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServe]:
    server = KBServe(tmp_path_factory.mktemp("batching-home"), workers=1).start()
    try:
        yield server
    finally:
        server.stop()


def test_concurrent_http_requests_get_the_vectors_single_calls_get(served: KBServe, fp32: OnnxMiniLM) -> None:
    texts = _queries(48, skip=100)
    requests = [texts[i : i + 1 + i % 3] for i in range(0, 48, 3)]
    bad = [{"model": LOCAL_MINILM_ID, "input": ["fine", "broken \ud800 surrogate"]},
           {"model": LOCAL_MINILM_ID, "input": []},
           {"model": LOCAL_MINILM_ID, "input": ["fine", 7]},
           {"model": "local:no-such-model", "input": ["fine"]}]
    bodies = [{"model": LOCAL_MINILM_ID, "input": r} for r in requests]
    order = bodies[:5] + bad[:2] + bodies[5:11] + bad[2:] + bodies[11:]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def post(body: dict) -> httpx.Response:
        with httpx.Client(timeout=120, headers=headers) as http:
            # the lone surrogate is sent as JSON's escape, as a client with a badly decoded string would
            return http.post(f"{served.url}/v1/embeddings", content=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})

    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(map(id, order), pool.map(post, order), strict=True))
    for body in bad:
        answer = answers[id(body)]
        assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
        assert answer.json()  # a JSON body saying what was wrong
    assert "surrogate" in answers[id(bad[0])].text or "Unicode" in answers[id(bad[0])].text
    for body in bodies:
        answer = answers[id(body)]
        assert answer.status_code == 200, answer.text
        served_vectors = np.array([d["embedding"] for d in sorted(answer.json()["data"], key=lambda d: d["index"])])
        single = np.vstack([fp32._embed_now([t]) for t in body["input"]])
        assert np.abs(served_vectors - single).max() <= 1e-6


# --- threads ---------------------------------------------------------------------------------------------

THREAD_PROBE = """
import json, os, sys
def tasks():
    return len(os.listdir("/proc/self/task"))
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import numpy, onnxruntime, tokenizers
from kb import local_minilm
before = tasks()
runtime = local_minilm.load()
runtime.embed(["t %d" % i for i in range(1100)])
print(json.dumps({"threads": runtime.threads, "session": runtime.session.get_session_options().intra_op_num_threads,
                  "rayon_left_set": "RAYON_NUM_THREADS" in os.environ, "new_tasks": tasks() - before,
                  "prefetch": runtime._tokenize_pool is not None}))
"""


def _probe(env: dict[str, str], *args: str) -> dict:
    full = {k: v for k, v in os.environ.items()
            if k not in ("KB_ONNX_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run([sys.executable, "-c", THREAD_PROBE, *args], cwd=ROOT, env={**full, **env},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell one thread from two")
def test_thread_settings_are_applied_to_onnxruntime_and_the_tokenizer() -> None:
    one = _probe({"KB_ONNX_THREADS": "1"})
    # one core's worth: no onnxruntime worker (the caller runs the ops), one rayon thread, no prefetch thread
    assert one == {"threads": 1, "session": 1, "rayon_left_set": False, "new_tasks": 1, "prefetch": False}
    two = _probe({"KB_ONNX_THREADS": "2"})
    # one onnxruntime worker beside the caller, two rayon threads, the tokenising thread
    assert two == {"threads": 2, "session": 2, "rayon_left_set": False, "new_tasks": 4, "prefetch": True}
    pinned = _probe({}, "pin-to-one-core")  # no setting: the cores the process may run on
    assert pinned == one
    capped = _probe({"KB_ONNX_THREADS": "64"}, "pin-to-one-core")  # never more threads than cores
    assert capped == one
    explicit = _probe({"KB_ONNX_THREADS": "1", "RAYON_NUM_THREADS": "2"})  # the user's setting wins
    assert explicit["new_tasks"] == 2 and explicit["rayon_left_set"]
