"""README tables from ``kb bench`` reports: ``python -m benchmarks.markdown bench-results/bench.json``
(several reports and ``--out DIR``: merged into one report with its tables and charts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.charts import draw
from benchmarks.targets import check_targets


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def tables(report: dict[str, Any]) -> str:
    machine = report["machine"]
    runs = report.get("runs", [report["started"]])
    out = [f"Measured {', '.join(runs)} on {machine['cpus']} cores ({machine['cpu']}), "
           f"{machine['memory_gib']} GiB, Python {machine['python']}, {machine['platform']}.", ""]
    out += ["**In process, side by side** (every peer open in one process, similarity search k=10 timed query by "
            "query in rotation; p50 ms over 3 rounds of 200 queries, first-round p50 in brackets, recall@10 "
            "against exact search):", ""]
    sizes = list(report["compare"])
    names: list[str] = []
    for figures in report["compare"].values():
        names += [n for n in figures if n not in names]
    out.append("| peer | " + " | ".join(f"{int(s):,} chunks" for s in sizes) + " |")
    out.append("| --- |" + " --- |" * len(sizes))
    for name in names:
        cells = []
        for size in sizes:
            fig = report["compare"][size].get(name)
            cells.append("–" if fig is None else
                         f"{fig['p50_ms']:.3f} ({fig['first_round_p50_ms']:.3f}), recall {fig['recall_at_10']:.3f}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "**Per peer, each in a process of its own** (ingestion with precomputed embeddings, durable; then a "
            "cold open and searches):", ""]
    out.append("| chunks | peer | ingest chunks/s | disk B/chunk | ingest peak RSS MB | cold open s | similarity p50 / "
               "p99 ms | filtered p50 ms | hybrid p50 ms | keyword p50 ms | serve RSS MB |")
    out.append("| --- |" + " --- |" * 10)
    for size, peers in report["sizes"].items():
        for peer, entry in peers.items():
            ingest, serve = entry["ingest"], entry["serve"]
            out.append(f"| {int(size):,} | {peer} | {ingest['chunks_per_second']:,.0f} | "
                       f"{ingest['disk_bytes_per_chunk']:,.0f} | {ingest['peak_rss_mb']:,.0f} | "
                       f"{serve['cold_open_seconds']:.2f} | {serve['similarity']['p50_ms']:.2f} / "
                       f"{serve['similarity']['p99_ms']:.2f} | "
                       f"{_ms(serve.get('filtered_similarity', {}).get('p50_ms'))} | "
                       f"{_ms(serve.get('hybrid', {}).get('p50_ms'))} | "
                       f"{_ms(serve.get('keyword', {}).get('p50_ms'))} | "
                       f"{serve['peak_rss_mb']:,.0f} |")
    for size, rows in report.get("rest", {}).items():
        out += ["", f"**REST, {int(size):,} chunks** (query vector, k=10, text and metadata in the answer; "
                    "keep-alive connections from one asyncio client process):", ""]
        out.append("| server | recall@10 | " + " | ".join(f"{r['clients']} clients: q/s, p50 / p99 ms"
                                                          for r in rows["kb"]) + " |")
        out.append("| --- | --- |" + " --- |" * len(rows["kb"]))
        for name in ("kb", "chroma-server"):
            out.append(f"| {name} | {rows.get(name + '_recall_at_10', float('nan')):.3f} | " + " | ".join(
                f"{r['qps']:,.0f}, {r['p50_ms']:.2f} / {r['p99_ms']:.2f}" for r in rows[name]) + " |")
    for size, scale in report.get("scale", {}).items():
        keyword = scale["keyword"]
        out += ["", f"**Keyword, hybrid and filtered search, {int(size):,} chunks** (HNSW knowledge bank; p50 / p99 ms "
                    "over 3 rounds of 200 queries, first-round p50 in brackets; keyword beside bm25s query by query):",
                "", "| workload | p50 / p99 ms | first-round p50 | recall@10 or note |", "| --- | --- | --- | --- |"]

        def row(name: str, fig: dict[str, Any], note: str) -> str:
            return f"| {name} | {fig['p50_ms']:.2f} / {fig['p99_ms']:.2f} | {fig['first_round_p50_ms']:.2f} | {note} |"

        out.append(row("keyword (kb, core.search)", keyword["kb"], f"top-10 overlap with bm25s "
                                                                    f"{keyword['top10_overlap']:.2f}"))
        out.append(row("keyword (bm25s, indices only)", keyword["bm25s"], ""))
        out.append(row("hybrid (kb)", scale["hybrid"], ""))
        for label, fig in scale["filtered"].items():
            out.append(row(f"filtered similarity {label} ({fig['selectivity']:.2%})", fig,
                           f"recall@10 {fig['recall_at_10']:.3f}"))
    e2e = report.get("e2e") or {}
    if e2e:
        out += ["", f"**End to end with the real model** ({e2e['documents']} SciFact abstracts): kb's ingestion "
                    f"{e2e['kb_ingest_seconds']:.1f} s beside the bare model's {e2e['bare_model_seconds']:.1f} s "
                    f"(median ratio of alternating rounds {e2e['kb_over_bare']:.3f}); a query text "
                    f"{e2e['query_first_ms']:.1f} ms the first time, {e2e['query_repeated_p50_ms']:.2f} ms repeated "
                    f"(query cache)."]
    out += ["", "**Targets** (ratios from this run):", ""]
    for check in report["targets"]:
        out.append(f"- {'PASS' if check['ok'] else 'MISS'} {check['target']}: {check['value']} "
                   f"(limit {check['limit']}) {check['detail']}")
    return "\n".join(out)


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Targets, the JSON report, the tables (bench.md) and the charts."""
    report["targets"] = check_targets(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(tables(report) + "\n")
    return draw(report, out)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Reports of runs on the same machine, a later report's entries winning. Every ratio stays within one run:
    a size's per-peer figures merge peer by peer (each peer's are its own processes', and a kb peer's ratio to
    raw faiss is inside its entry); a size's side-by-side comparison is replaced only by one of at least two
    peers; the rest by size. A report that merged earlier runs keeps listing them in ``runs``."""
    runs = sorted({run for r in reports for run in r.get("runs") or [r["started"]]})
    merged: dict[str, Any] = {**reports[0], "runs": runs}
    merged["sizes"] = {}
    for report in reports:
        for size, peers in report.get("sizes", {}).items():
            merged["sizes"].setdefault(size, {}).update(peers)
    merged["compare"] = {}
    for report in reports:
        merged["compare"].update({size: peers for size, peers in report.get("compare", {}).items()
                                  if len(peers) >= 2 or size not in merged["compare"]})
    for key in ("rest", "scale", "ingest_rounds", "ingest_settle"):
        merged[key] = {k: v for r in reports for k, v in r.get(key, {}).items()}
    merged["e2e"] = next((r["e2e"] for r in reversed(reports) if r.get("e2e")), {})
    return merged


def main(argv: list[str] | None = None) -> int:
    """``markdown report.json`` prints the tables; ``markdown a.json b.json --out DIR`` merges runs into DIR."""
    args = list(argv if argv is not None else sys.argv[1:])
    out = None
    if "--out" in args:
        out = Path(args.pop(args.index("--out") + 1))
        args.remove("--out")
    reports = [json.loads(Path(a).read_text()) for a in (args or ["bench-results/bench.json"])]
    report = merge(reports) if len(reports) > 1 else reports[0]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_report(report, out)
    print(tables(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
