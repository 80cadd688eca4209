"""``make bench`` / ``python -m benchmarks``: run every benchmark with its defaults, JSON into bench-results/."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    ("suite", []),  # kb bench: every peer side by side, JSON + PNG charts into bench-results/
    ("writer_throughput", ["--chunks", "10000"]),
    ("ingest_throughput", ["--rows", "10000"]),
    ("langchain_ingest", ["--chunks", "100000", "--rounds", "3"]),  # real text, lists through LangChain's API
    ("store_latency", ["--chunks", "10000", "--chroma-server"]),
    ("rest_latency", ["--chunks", "10000"]),
    ("load", ["--spawn", "--clients", "8", "--seconds", "20"]),
    ("scifact", []),
]


def main(argv: list[str] | None = None) -> int:
    selected = set(argv if argv is not None else sys.argv[1:])
    failures = 0
    for name, args in BENCHMARKS:
        if selected and name not in selected:
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        out = "bench-results" if name == "suite" else f"bench-results/{name}.json"
        status = importlib.import_module(f"benchmarks.{name}").main([*args, "--out", out])
        print(f"=== {name}: exit {status} in {time.perf_counter() - started:.0f}s ===", flush=True)
        failures += int(status != 0)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
