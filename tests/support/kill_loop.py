"""SIGKILL a knowledge-bank writer at random moments and at kb's named fault points, again and again, on any store.

Each cycle starts a writer (tests/support/kill_worker.py: 300-record batches, so embedded Chroma writes its
HNSW files every few commits) and kills it: most cycles after a random delay (a third of them during the first
write after open), every fourth at one of kb's named fault points of a commit (``KB_FAULT_POINT``). A fresh
process then checks: whole batches only, the committed ones (those printed, or the one being committed; none of
it when killed before the commit point, all of it after), a similarity and a hybrid search identical to an exact
search over the committed records; the next cycle's writer must open and commit. The short version runs in the
test suite (tests/test_kill_loop.py); by hand, the long one (Chroma server and Elasticsearch start their own):

    PYTHONPATH=. HF_HUB_OFFLINE=1 python -m tests.support.kill_loop --store faiss --kills 50 [--out FILE]

prints one line per kill and a summary (kills, rebuilds of a damaged index, mismatches, seconds) and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.kill_worker import BATCH, window

ROOT = Path(__file__).resolve().parents[2]
STORES = ("faiss", "chroma", "chroma-server", "elasticsearch")
POINTS = ("store_records_written", "before_sqlite_commit", "after_sqlite_commit")
# a FAISS writer's background merge of its segments (stores.faiss.merge), which starts after ten small commits
MERGE_POINTS = ("merge_segment_written", "merge_before_commit", "merge_after_commit")
# the named points each store's commit passes (FAISS: every commit, then its merges, which come every few commits)
STORE_POINTS = {"faiss": POINTS[1:] + MERGE_POINTS, "chroma": POINTS, "chroma-server": POINTS,
                "elasticsearch": POINTS, "faiss-hnsw_sq8": POINTS[1:] + MERGE_POINTS}


def _run(command: str, folder: Path, store: tuple[str, str, str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.kill_worker", command, str(folder), *extra, *store]


def _env(point: str | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "KB_FAULT_POINT": point or ""}


def check(folder: Path, store: tuple[str, str, str]) -> dict:
    done = subprocess.run(_run("check", folder, store), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_env())
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _problems(state: dict, printed: list[int], last: int, point: str | None) -> list[str]:
    if "error" in state:
        return [f"the check failed: {state['error']}"]
    problems = []
    if not state["whole"]:
        problems.append("a batch is not whole")
    allowed = [window(last), window(last + 1)]
    if point in POINTS[:2]:
        allowed = allowed[:1]  # killed before the commit point: nothing of the batch
    elif point == POINTS[2]:
        allowed = allowed[1:]  # killed after it: the batch is durable
    if state["batches"] not in allowed:
        held = state["batches"]
        problems.append(f"batches {held[0] if held else '-'}..{held[-1] if held else '-'} ({len(held)}) held, "
                        f"expected those through {last}{'' if len(allowed) == 1 else f' or {last + 1}'}")
    if not state["similarity_exact"]:
        problems.append("similarity search differs from the exact search")
    if not state["hybrid_exact"]:
        problems.append("hybrid search differs from the exact search")
    return problems


def kill_loop(folder: Path, kills: int, seed: int, kind: str = "chroma", url: str | None = None,
              kb_id: str = "killed", delay: tuple[float, float] = (0.0, 3.0), point_every: int = 4,
              report: bool = False, points: tuple[str, ...] | None = None) -> dict:
    """Kill ``kills`` writers; every ``point_every``-th at a named fault point (of ``points``, by default all the
    store's). Mismatches are listed, not raised."""
    rng = random.Random(seed)
    store = (kind, url or "", kb_id)
    started = time.monotonic()
    batches: list[int] = []
    rebuilds, at_points, mismatches = 0, 0, []
    for cycle in range(kills):
        chosen = points or STORE_POINTS[kind]
        point = chosen[(cycle // point_every) % len(chosen)] if cycle % point_every == point_every - 1 else None
        first = batches[-1] + 1 if batches else 0
        writer = subprocess.Popen(_run("write", folder, store, str(first)), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=_env(point))
        assert writer.stdout is not None
        ready = writer.stdout.readline().strip()
        if ready != "ready":  # the next writer must work: nothing after this is meaningful
            writer.wait(60)
            mismatches.append({"kill": cycle + 1, "problems": [f"the writer did not start ({ready!r})"]})
            break
        if point is None:
            # a third of the kills come during the first write (which follows the open, and any rebuild), the
            # rest while the writer commits batch after batch
            early = [] if rng.random() < 1 / 3 else [writer.stdout.readline()]
            time.sleep(rng.uniform(*delay))
            writer.send_signal(signal.SIGKILL)
        else:
            early = []  # it kills itself at the point
        try:
            writer.wait(240 if point in MERGE_POINTS else 120)  # a merge comes after ten commits, and is throttled
        except subprocess.TimeoutExpired:  # a fault point never reached, or a writer stuck: kill it, count it
            writer.kill()
            writer.wait(60)
            mismatches.append({"kill": cycle + 1, "point": point, "problems": ["the writer did not die by itself"]})
        printed = [int(line) for line in "".join(early + [writer.stdout.read()]).split() if line.isdigit()]
        killed = writer.returncode == -signal.SIGKILL
        state = check(folder, store)
        problems = ([] if killed else [f"the writer ended with {writer.returncode}, not killed"]) + _problems(
            state, printed, printed[-1] if printed else first - 1, point)
        if problems:
            mismatches.append({"kill": cycle + 1, "point": point, "printed": printed, "problems": problems})
        at_points += point is not None
        rebuilds += len(state.get("recovered", []))
        batches = state.get("batches", batches)
        if report:
            print(f"kill {cycle + 1}/{kills} ({point or 'random moment'}): {batches[-1] + 1 if batches else 0} "
                  f"batches committed ({state.get('records')} records held), {len(printed)} in this run; rebuilt: "
                  f"{state.get('recovered') or 'no'}; {'; '.join(problems) or 'exact'}", flush=True)
    return {"store": kind, "kills": kills, "at_fault_points": at_points, "rebuilds": rebuilds,
            "batches_committed": batches[-1] + 1 if batches else 0,
            "records_written": (batches[-1] + 1 if batches else 0) * BATCH, "mismatches": mismatches,
            "seconds": round(time.monotonic() - started, 1)}


@contextlib.contextmanager
def server_for(kind: str, data: Path) -> Iterator[str | None]:
    """A Chroma server or an Elasticsearch node for the loop (stopped after), or None for an embedded store."""
    if kind == "chroma-server":
        from tests.support.chroma_server import ChromaServer

        server = ChromaServer(data / "chroma-data").start()
        try:
            yield server.url
        finally:
            server.stop()
    elif kind == "elasticsearch":
        from tests.support.elasticsearch_server import ElasticsearchNode

        node = ElasticsearchNode(name="kill-loop").start()
        try:
            yield node.url
        finally:
            node.cleanup()
    else:
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=STORES, default="chroma")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=35)
    parser.add_argument("--delay", type=float, nargs=2, default=(0.0, 3.0), metavar=("MIN", "MAX"),
                        help="seconds between a writer's first commit and its kill (default 0 3)")
    parser.add_argument("--folder", type=Path, help="the knowledge bank's folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="the JSON summary (default kill-loop-STORE.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, server_for(args.store, Path(tmp)) as url:
        summary = kill_loop(args.folder or Path(tmp) / "kb", args.kills, args.seed, args.store, url,
                            delay=tuple(args.delay), report=True)
    print(f"{args.store}: kills survived {summary['kills']} ({summary['at_fault_points']} at named fault points); "
          f"damaged index rebuilt {summary['rebuilds']} times; {summary['records_written']} records committed; "
          f"mismatches {len(summary['mismatches'])}; {summary['seconds']} s")
    (args.out or Path(f"kill-loop-{args.store}.json")).write_text(json.dumps(summary, indent=2))
    sys.exit(1 if summary["mismatches"] else 0)


if __name__ == "__main__":
    main()
