"""A lone query through the local model: this tree beside another version of kb, alternating rounds.

    git archive <commit> | tar -x -C /tmp/kb-old      # the code to compare with
    python -m benchmarks.embedding_query --old-tree /tmp/kb-old [--rounds 20] [--paths 13,32,64] [--out FILE]

Each tree's model (``--model int8``, kb's default threads and query path) is loaded once in a process of its
own (``PYTHONPATH`` set to the tree); the driver asks the two processes in turn for a round of lone queries
(``OnnxMiniLM.embed([text])``, what a search embeds when its query is not cached), so both see the same
machine. Cases: SciFact training queries (users' questions, 40 per round) and texts of about each ``--paths``
token count. Figures per case and tree: wall p50 and p10 per query back to back, wall p50 paced 5 ms apart,
and CPU ms per query (the process's CPU time over a back-to-back round, pool threads included); the new/old
ratio of each round's CPU, median over rounds, is the figure that moves least on a shared machine.

Then a query during a batch: while a thread embeds ``--batch-docs`` SciFact abstracts, the main thread embeds
a lone SciFact query (of at most ``kb.onnx_sessions.QUERY_MAX_TOKENS`` tokens) every 20 ms; the query latencies,
the batch's duration beside its duration with no queries (``--batch-rounds`` alternating rounds), and whether
every query's vector equals the one it gets alone. Before any timing, both trees embed SciFact's training
queries and edge texts alone, and the vectors are compared bit for bit. ``--rounds 0`` skips the lone queries.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGE_TEXTS = ["", " \n\t ", "kb", "日本語のテキスト 🙂 émigré naïve ﬁ", "a\u0301\u200bb\u0000c", "E0425",
              "ERR_CONNECTION_REFUSED", "SELECT * FROM orders;", "word " * 5000]
PACE_S = 0.005
QUERY_EVERY_S = 0.02


# --- the worker: one tree's model, answering the driver's requests on stdin/stdout --------------------------------

def worker(model: str) -> None:
    from kb import local_minilm

    runtime = local_minilm.load(int8=model == "int8")
    runtime.embed(["warm up the query session", "and the pooled one"])
    runtime.embed(["warm up the query session"])
    print(json.dumps({"ready": True, "threads": runtime.threads}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["kind"] == "vectors":
            answer = _vectors(runtime, request["texts"])
        elif request["kind"] == "round":
            answer = _round(runtime, request["texts"], request["pace"])
        else:
            answer = _during_batch(runtime, request["batch"], request["queries"])
        print(json.dumps(answer), flush=True)


def _vectors(runtime: Any, texts: list[str]) -> dict[str, Any]:
    vectors = np.vstack([runtime.embed([t]) for t in texts]).astype(np.float32)
    return {"vectors": base64.b64encode(vectors.tobytes()).decode("ascii")}


def _round(runtime: Any, texts: list[str], pace: float) -> dict[str, Any]:
    walls = []
    cpu = time.process_time()
    for text in texts:
        started = time.perf_counter()
        runtime.embed([text])
        walls.append(time.perf_counter() - started)
        if pace:
            time.sleep(pace)
    return {"walls": walls, "cpu": time.process_time() - cpu}


def _during_batch(runtime: Any, batch: list[str], queries: list[str]) -> dict[str, Any]:
    done = threading.Event()
    spent: list[float] = []

    def embed_batch() -> None:
        started = time.perf_counter()
        runtime.embed(batch)
        spent.append(time.perf_counter() - started)
        done.set()

    thread = threading.Thread(target=embed_batch)
    thread.start()
    time.sleep(0.05)  # the batch's first run is under way
    latencies, vectors, asked = [], [], []
    while queries and not done.is_set():
        text = queries[len(asked) % len(queries)]
        started = time.perf_counter()
        vectors.append(runtime.embed([text]))
        latencies.append(time.perf_counter() - started)
        asked.append(text)
        time.sleep(QUERY_EVERY_S)
    thread.join()
    wrong = sum(not np.array_equal(v, runtime.embed([t])) for v, t in zip(vectors, asked, strict=True))
    return {"latencies": latencies, "batch_s": spent[0], "wrong_vectors": wrong}


# --- the driver ---------------------------------------------------------------------------------------------------

class Tree:
    """One tree's worker process."""

    def __init__(self, name: str, tree: Path, model: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker", model], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree)
        self.ready = self._read()

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} tree's worker ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def compare(trees: list[Tree], cases: dict[str, list[str]], rounds: int) -> dict[str, Any]:
    walls = {(c, t.name, p): [] for c in cases for t in trees for p in (0.0, PACE_S)}
    cpus: dict[tuple[str, str], list[float]] = {(c, t.name): [] for c in cases for t in trees}
    for r in range(rounds):
        for case, texts in cases.items():
            for pace in (0.0, PACE_S):
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    answer = tree.ask(kind="round", texts=texts, pace=pace)
                    walls[case, tree.name, pace].extend(answer["walls"])
                    if not pace:
                        cpus[case, tree.name].append(answer["cpu"] / len(texts))
        print(f"round {r + 1}/{rounds}", flush=True)
    result: dict[str, Any] = {}
    for case in cases:
        row: dict[str, Any] = {}
        for tree in trees:
            back = np.array(walls[case, tree.name, 0.0]) * 1000
            paced = np.array(walls[case, tree.name, PACE_S]) * 1000
            row[tree.name] = {"wall_p50_ms": float(np.percentile(back, 50)),
                              "wall_p10_ms": float(np.percentile(back, 10)),
                              "paced_wall_p50_ms": float(np.percentile(paced, 50)),
                              "cpu_ms_per_query": float(np.median(cpus[case, tree.name]) * 1000)}
        old, new = trees[0].name, trees[1].name
        ratios = np.array(cpus[case, new]) / np.array(cpus[case, old])
        row["new_over_old_cpu_median_of_rounds"] = float(np.median(ratios))
        row["new_over_old_wall_p50"] = row[new]["wall_p50_ms"] / row[old]["wall_p50_ms"]
        result[case] = row
    return result


def during_batch(trees: list[Tree], batch: list[str], queries: list[str], rounds: int) -> dict[str, Any]:
    """Each tree's batch with queries arriving and alone, in turn: the queries' latencies, and what they cost
    the batch (its duration with them over its duration alone in the same round, median over rounds)."""
    answers: dict[str, list[dict[str, Any]]] = {t.name: [] for t in trees}
    alone: dict[str, list[float]] = {t.name: [] for t in trees}
    for r in range(rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            for with_queries in (True, False) if r % 2 == 0 else (False, True):
                answer = tree.ask(kind="during_batch", batch=batch, queries=queries if with_queries else [])
                if with_queries:
                    answers[tree.name].append(answer)
                else:
                    alone[tree.name].append(answer["batch_s"])
    result = {}
    for name, runs in answers.items():
        latencies = np.array([x for run in runs for x in run["latencies"]]) * 1000
        with_queries = np.array([run["batch_s"] for run in runs])
        result[name] = {"queries": len(latencies), "query_p50_ms": float(np.percentile(latencies, 50)),
                        "query_max_ms": float(latencies.max()),
                        "batch_s_median": float(np.median(with_queries)),
                        "batch_alone_s_median": float(np.median(alone[name])),
                        "batch_with_queries_over_alone": float(np.median(with_queries / np.array(alone[name]))),
                        "wrong_vectors": sum(run["wrong_vectors"] for run in runs)}
    return result


def _print_lone(rows: dict[str, Any]) -> None:
    for case, row in rows.items():
        figures = [f"{name} wall p50 {row[name]['wall_p50_ms']:.2f} ms (p10 {row[name]['wall_p10_ms']:.2f}, paced "
                   f"{row[name]['paced_wall_p50_ms']:.2f}), CPU {row[name]['cpu_ms_per_query']:.2f} ms"
                   for name in ("old", "new")]
        print(f"{case}: {'; '.join(figures)}; new/old CPU {row['new_over_old_cpu_median_of_rounds']:.3f}, "
              f"wall p50 {row['new_over_old_wall_p50']:.3f}")


def main(argv: list[str] | None = None) -> int:
    from tokenizers import Tokenizer

    from benchmarks.embedding import SCIFACT, cpu_peak, query_texts, scifact
    from benchmarks.results import write_results
    from kb import local_minilm
    from kb.onnx_sessions import QUERY_MAX_TOKENS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-tree", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--model", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--paths", default="13,32,64", help="token counts (about) of lone texts, comma-separated")
    parser.add_argument("--batch-docs", type=int, default=200, help="abstracts in the batch a query arrives during")
    parser.add_argument("--batch-rounds", type=int, default=2, help="0: no query-during-a-batch measurement")
    parser.add_argument("--out", type=Path, default=Path("bench-results/embedding-query-compare.json"))
    args = parser.parse_args(argv)
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries-train.jsonl").read_text().splitlines()]
    peak = cpu_peak()
    print(f"CPU: {peak['model']}, {peak['cores']} cores; int8 flags: {' '.join(peak['int8_flags']) or 'none'}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    trees = [Tree("old", args.old_tree.resolve(), args.model), Tree("new", ROOT, args.model)]
    try:
        check = [*EDGE_TEXTS, *queries]
        vectors = [np.frombuffer(base64.b64decode(t.ask(kind="vectors", texts=check)["vectors"]), dtype=np.float32)
                   for t in trees]
        identical = bool(np.array_equal(vectors[0], vectors[1]))
        print(f"vectors of {len(check)} lone texts (SciFact training queries, edge texts) bit for bit the same in "
              f"both trees: {identical}", flush=True)
        cases = {"scifact queries": queries[:40]}
        cases.update({f"{tokens} tokens": [text] * 40
                      for tokens, text in query_texts(tuple(int(x) for x in args.paths.split(",") if x)).items()})
        result: dict[str, Any] = {"machine": {"cpu": peak, "load_average_start": os.getloadavg()},
                                  "model": args.model, "threads": trees[1].ready["threads"],
                                  "identical_vectors": identical, "checked_texts": len(check),
                                  "lone_query": compare(trees, cases, args.rounds) if args.rounds else {}}
        _print_lone(result["lone_query"])
        if args.batch_rounds:
            # the queries a one-thread query session takes (a longer lone text runs on the pool, after the batch)
            tokenizer = Tokenizer.from_file(str(local_minilm.model_dir() / "tokenizer.json"))
            tokenizer.no_padding()  # the file pads to 128
            short = [q for q in queries if len(tokenizer.encode(q).ids) <= QUERY_MAX_TOKENS][:40]
            if not short:
                raise RuntimeError(f"no SciFact training query of at most {QUERY_MAX_TOKENS} tokens")
            result["query_during_batch"] = during_batch(trees, scifact(args.batch_docs)[0], short, args.batch_rounds)
        result["machine"]["load_average_end"] = os.getloadavg()
    finally:
        for tree in trees:
            tree.close()
    for name, row in result.get("query_during_batch", {}).items():
        print(f"during a batch of {args.batch_docs} abstracts, {name}: {row['queries']} queries, p50 "
              f"{row['query_p50_ms']:.1f} ms, max {row['query_max_ms']:.1f} ms; batch {row['batch_s_median']:.2f} s "
              f"(alone {row['batch_alone_s_median']:.2f} s, ratio {row['batch_with_queries_over_alone']:.3f}); "
              f"wrong vectors {row['wrong_vectors']}")
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2])
    else:
        raise SystemExit(main())
