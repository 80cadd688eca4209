"""onnxruntime sessions for the local model: the pooled session every run may use, and the one-thread session
a single short text (a query) runs on.

With two or more intra-op threads and spinning off (kb's default, see ``kb.local_minilm.spin_microseconds``),
every operator large enough to be split wakes a sleeping pool thread and waits for it. For a ~10-token query
the arithmetic of such an operator is a few microseconds, so the hand-offs cost more than they save: on this
machine (int8, 13 tokens) the pooled session spent more CPU per query than a one-thread session, and was no
faster in wall time (``docs/benchmarks/embedding-query.json``). onnxruntime has no per-run thread count, so a
short lone text runs on a second session of the same graph with ``intra_op_num_threads=1``, built at the
first such call (a process that never embeds a short lone text, such as an ingestion worker, never pays for
it; ``kb serve``'s warm-up builds it). The word embeddings (47 MB, most of an int8 session's memory) are read
once from the checkpoint and handed to both sessions, so the second session adds about 16 MB of RSS for
int8 and 44 MB for fp32 (60 and 111 MB if each held its own copy).

Both sessions give the same vectors: int8 bit for bit (the integer products are exact and each output
element is scaled once, whichever thread computes it), fp32 to 1e-6 (tested).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

# The longest lone text (in tokens, special tokens included) that runs on the one-thread session. Up to
# ~20 tokens the pool barely overlaps its threads (wall about equal to CPU per query, 2.4-2.5 ms, int8, 13
# tokens) and the one-thread session spends 15% less CPU (2.40 against 2.84 ms, under load); from some length
# on, the pool's second core shortens a lone text's wall time even though it adds CPU. Where that crossing is
# can only be measured on an idle machine: ``python -m benchmarks.embedding --query-only --query-paths``
# reports both sessions at 13, 32 and 64 tokens. 32 covers 89% of SciFact's 809 training queries (median 21).
QUERY_MAX_TOKENS = 32


# graph initializer -> the checkpoint's tensor it is built from unchanged (kb.onnx_minilm: fp32 and int8 graphs)
SHARED_INITIALIZERS = {"word_embeddings": "embeddings.word_embeddings.weight"}


def shared_initializers(weights_file: Path) -> dict[str, Any]:
    """``SHARED_INITIALIZERS`` as onnxruntime values over arrays read from the checkpoint, for the sessions to
    use instead of their own copies (the values keep their arrays alive; keep the dict as long as the sessions).
    The weights were checked against their sha256 and the graph built from them, so the values are the graph's."""
    import onnxruntime as ort
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="np") as checkpoint:
        arrays = {name: np.ascontiguousarray(checkpoint.get_tensor(tensor), dtype=np.float32)
                  for name, tensor in SHARED_INITIALIZERS.items()}
    return {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()}


def open_session(graph: Path, threads: int, spin_us: int, shared: dict[str, Any] | None = None) -> Any:
    """An onnxruntime CPU session on ``graph`` with ``threads`` intra-op threads, using the initializers in
    ``shared`` instead of its own copies."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for name, value in (shared or {}).items():
        options.add_initializer(name, value)
    # the graph already holds the fused BERT kernels; this adds constant folding and memory planning
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # spinning pool threads would burn the cores the tokenizer, faiss and the server need between runs;
    # KB_ONNX_SPIN_US allows a bounded spin (a run's operators follow each other within microseconds,
    # so a short spin saves the wake-ups inside a run and ends soon after it)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    if spin_us:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    # Without VNNI (AVX2, AVX-512 without VNNI) onnxruntime's uint8 x int8 kernels add product pairs into int16,
    # which saturates with kb's 8-bit weights: the int8 model's vectors fell to cosine 0.994 to fp32 under an
    # emulated Haswell (benchmarks/int8_avx2_check.py). This makes those CPUs take the exact uint8 x uint8
    # kernels instead; VNNI CPUs and fp32 graphs are unaffected (docs/local-model.md).
    options.add_session_config_entry("session.x64quantprecision", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class SessionChooser:
    """Which session runs a call: the one-thread session for one text of at most ``query_max_tokens`` tokens
    when the pool has more than one thread, else the pooled session."""

    def __init__(self, graph: Path, pooled: Any, threads: int, query_max_tokens: int = QUERY_MAX_TOKENS,
                 shared: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.pooled = pooled
        self.shared = shared
        # with one thread the pooled session already is a one-thread session: no second copy of the graph
        self.query_max_tokens = query_max_tokens if threads > 1 else 0
        self._query: Any = None
        self._build_lock = threading.Lock()

    def uses_query_session(self, texts: int, tokens: int) -> bool:
        return texts == 1 and tokens <= self.query_max_tokens

    def query_session(self) -> Any:
        """The one-thread session, built at its first use (once, however many threads ask at the same time)."""
        if self._query is None:
            with self._build_lock:
                if self._query is None:
                    self._query = open_session(self.graph, 1, 0, self.shared)
        return self._query

    @property
    def query_session_built(self) -> bool:
        return self._query is not None
