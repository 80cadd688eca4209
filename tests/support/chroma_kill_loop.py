"""SIGKILL an embedded-Chroma writer at random moments, again and again, and check the knowledge bank after each.

Each cycle starts a writer (tests/support/chroma_kill_worker.py: 300-record batches, so Chroma writes its
HNSW files every few commits), kills it after a random delay, then checks in a fresh process: whole batches
only, the committed ones (those printed, or the one being committed), a similarity search identical to an
exact search over the committed records, a keyword search that finds the last batch; the next cycle's
writer must work. The short version runs in the test suite; by hand, the long one:

    PYTHONPATH=. HF_HUB_OFFLINE=1 python -m tests.support.chroma_kill_loop --kills 50 [--folder DIR]

prints one line per kill and a summary (kills, rebuilds after a damaged index, seconds) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.chroma_kill_worker", *args]


def check(folder: Path) -> dict:
    done = subprocess.run(_python("check", str(folder)), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"check failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def kill_loop(folder: Path, kills: int, seed: int, delay: tuple[float, float] = (0.0, 3.0),
              report: bool = False) -> dict:
    rng = random.Random(seed)
    started = time.monotonic()
    batches: list[int] = []
    rebuilds = 0
    for cycle in range(kills):
        first = batches[-1] + 1 if batches else 0
        writer = subprocess.Popen(_python("write", str(folder), str(first)), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert writer.stdout is not None
        ready = writer.stdout.readline().strip()
        assert ready == "ready", f"cycle {cycle}: the writer did not start ({ready!r})"
        # A third of the kills come during the first write (which follows the open, and any rebuild), the rest
        # while the writer commits batch after batch (chromadb's first call alone takes seconds under load).
        early = [] if rng.random() < 1 / 3 else [writer.stdout.readline()]
        time.sleep(rng.uniform(*delay))
        writer.send_signal(signal.SIGKILL)
        writer.wait(60)
        printed = [int(line) for line in "".join(early + [writer.stdout.read()]).split() if line.isdigit()]
        state = check(folder)
        last = printed[-1] if printed else first - 1
        assert state["whole"], (cycle, state)
        assert state["batches"] in (list(range(last + 1)), list(range(last + 2))), (cycle, printed, state["batches"])
        assert state["similarity_exact"] and state["keyword_exact"], (cycle, state)
        rebuilds += len(state["recovered"])
        batches = state["batches"]
        if report:
            print(f"kill {cycle + 1}/{kills}: {len(batches)} batches ({state['records']} records) committed, "
                  f"{len(printed)} in this run; rebuilt: {state['recovered'] or 'no'}", flush=True)
    return {"kills": kills, "rebuilds": rebuilds, "batches": len(batches), "records": len(batches) * 300,
            "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=35)
    parser.add_argument("--folder", type=Path, help="the knowledge bank's folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=Path("chroma-kill-loop.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        summary = kill_loop(args.folder or Path(tmp) / "kb", args.kills, args.seed, report=True)
    print(f"kills survived: {summary['kills']}; damaged index rebuilt: {summary['rebuilds']} times; "
          f"{summary['records']} records committed; {summary['seconds']} s")
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
