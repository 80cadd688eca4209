"""``/v1/embeddings`` under concurrent callers, through a real ``kb serve``: with and without dynamic batching.

    python -m benchmarks.embeddings_server [--callers 8 --rounds 6 --requests 96 --texts 1]
        [--model local:all-MiniLM-L6-v2] [--out bench-results/embeddings_server.json]

One ``kb serve`` (uvicorn, one worker, the model warmed up before /readyz) per variant, all running at once:
``unbatched`` (``KB_EMBED_BATCH_MAX=0``: every request its own model run, as before dynamic batching),
``batched`` (the default: requests that arrive while a run is in progress share the next one) and
``window-2ms`` (``KB_EMBED_BATCH_WINDOW_MS=2``: a lone request also waits 2 ms for companions). Rounds
alternate between the servers; in each, ``--callers`` threads (one keep-alive HTTP connection each) send
``--requests`` requests of ``--texts`` SciFact titles, every text new to every server (so the embedding cache
never answers). Reported: requests/s (median of rounds), the client's p50 latency, and the server's CPU
seconds per request (from /proc, so that other jobs on a shared machine matter less), with the load average
and the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.embedding import SCIFACT, cpu_peak
from benchmarks.results import write_results
from kb import local_minilm

VARIANTS = {"unbatched": {"KB_EMBED_BATCH_MAX": "0"}, "batched": {},
            "window-2ms": {"KB_EMBED_BATCH_WINDOW_MS": "2"}}


def titles() -> Iterator[str]:
    """SciFact titles, each once (5,183), then the train queries: short texts, as searches send."""
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)["title"]
    with (SCIFACT / "queries-train.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)["text"]


class Server:
    def __init__(self, name: str, env: dict[str, str], home: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.name, self.url = name, f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "KB_HOME": str(home / name), "KB_AUTH": "off", "HF_HUB_OFFLINE": "1",
                    "KB_MODEL_CACHE": str(local_minilm.model_cache_dir()), **env}
        self.log = home / f"{name}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(self.port),
                                             "--log-level", "warning"], env=full_env, stdout=sink,
                                            stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kb serve ({self.name}) exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"kb serve ({self.name}) was not ready within {timeout} s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_round(server: Server, requests: list[list[str]], callers: int, model: str) -> dict[str, float]:
    """``requests`` sent by ``callers`` threads as fast as answers come back."""
    import httpx

    pending = list(reversed(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def caller() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    texts = pending.pop()
                started = time.perf_counter()
                answer = http.post(f"{server.url}/v1/embeddings", json={"model": model, "input": texts})
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if answer.status_code != 200 or len(answer.json()["data"]) != len(texts):
                        failures.append(f"{answer.status_code}: {answer.text[:200]}")

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu_before
    if failures:
        raise RuntimeError(f"{server.name}: {len(failures)} requests failed, first: {failures[0]}")
    return {"requests_per_s": len(requests) / wall, "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "server_cpu_ms_per_request": cpu / len(requests) * 1000, "seconds": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=96, help="requests per round and server")
    parser.add_argument("--texts", type=int, default=1, help="texts per request")
    parser.add_argument("--model", default=local_minilm.LOCAL_MINILM_ID)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("bench-results/embeddings_server.json"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    needed = len(names) * args.rounds * args.requests * args.texts
    source = titles()
    texts = [next(source) for _ in range(needed + 8 * len(names))]
    if len(set(texts)) < len(texts):
        texts = list(dict.fromkeys(texts))
    if len(texts) < needed + 8 * len(names):
        parser.error(f"{needed} distinct texts needed, SciFact has {len(texts)}: fewer rounds or requests")
    peak = cpu_peak()
    print(f"CPU: {peak['model']}, {peak['cores']} cores; int8 flags: {' '.join(peak['int8_flags']) or 'none'}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print(f"{args.callers} callers, {args.requests} requests of {args.texts} text(s) per round, model {args.model}",
          flush=True)
    result: dict[str, Any] = {"callers": args.callers, "requests_per_round": args.requests,
                              "texts_per_request": args.texts, "model": args.model, "cpu": peak,
                              "load_average_start": os.getloadavg(), "rounds": []}
    with tempfile.TemporaryDirectory(prefix="kb-bench-embeddings-") as home:
        servers = {name: Server(name, VARIANTS[name], Path(home)) for name in names}
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():  # a first request per server, outside the figures
                run_round(server, [[texts.pop()] for _ in range(8)], args.callers, args.model)
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                row: dict[str, Any] = {}
                for name in order:
                    batch = [[texts.pop() for _ in range(args.texts)] for _ in range(args.requests)]
                    row[name] = run_round(servers[name], batch, args.callers, args.model)
                result["rounds"].append(row)
                print(f"  round {r + 1}: " + ", ".join(
                    f"{n} {row[n]['requests_per_s']:.1f} req/s ({row[n]['server_cpu_ms_per_request']:.1f} ms CPU)"
                    for n in names), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    summary: dict[str, Any] = {}
    for name in names:
        rows = [r[name] for r in result["rounds"]]
        summary[name] = {key: float(np.median([row[key] for row in rows]))
                         for key in ("requests_per_s", "p50_ms", "server_cpu_ms_per_request")}
    if "unbatched" in names:
        for name in names:
            if name != "unbatched":
                summary[name]["over_unbatched_median_of_rounds"] = float(np.median(
                    [r[name]["requests_per_s"] / r["unbatched"]["requests_per_s"] for r in result["rounds"]]))
    result["summary"] = summary
    result["load_average_end"] = os.getloadavg()
    for name, figures in summary.items():
        ratio = figures.get("over_unbatched_median_of_rounds")
        print(f"{name}: {figures['requests_per_s']:.1f} req/s (median of {args.rounds} rounds), p50 "
              f"{figures['p50_ms']:.1f} ms, server CPU {figures['server_cpu_ms_per_request']:.2f} ms/request"
              + (f"; {ratio:.2f}x unbatched (median of per-round ratios)" if ratio else ""))
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
