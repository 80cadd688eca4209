"""The issue's targets, checked on figures measured in one ``kb bench`` run, and the printed summary."""

from __future__ import annotations

from typing import Any

PEER_PAIRS = [("kb-flat", "langchain-faiss"), ("kb-hnsw", "langchain-chroma"), ("kb-hnsw", "langchain-faiss")]


def _serve(report: dict[str, Any], size: str, peer: str) -> dict[str, Any] | None:
    entry = report["sizes"].get(size, {}).get(peer)
    return entry["serve"] if entry else None


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, better: str, detail: str) -> None:
        if value is None:
            return
        ok = value <= limit if better == "lower" else value >= limit
        checks.append({"target": name, "value": round(value, 3), "limit": limit, "ok": ok, "detail": detail})

    for size, peers in report["sizes"].items():
        for kind in ("flat", "hnsw"):
            kb_serve = _serve(report, size, f"kb-{kind}")
            if kb_serve:
                raw = kb_serve["raw_faiss_same_index"]["p50_ms"]
                sim = kb_serve["similarity"]
                add(f"{size}: kb-{kind} p50 / raw faiss p50 on the same index", sim["p50_ms"] / raw, 1.2, "lower",
                    f"{sim['p50_ms']:.3f} ms vs {raw:.3f} ms (first round: "
                    f"{sim.get('first_round_p50_ms', 0):.3f} vs "
                    f"{kb_serve['raw_faiss_same_index'].get('first_round_p50_ms', 0):.3f} ms)")
        # like for like (exact with exact, HNSW with HNSW), from the side-by-side run in one process
        side_by_side = report.get("compare", {}).get(size, {})
        for mine_name, their_name in PEER_PAIRS:
            mine, theirs = side_by_side.get(mine_name), side_by_side.get(their_name)
            if mine and theirs:
                add(f"{size}: {mine_name} p50 / {their_name} p50 (side by side)", mine["p50_ms"] / theirs["p50_ms"],
                    1.0, "lower", f"{mine['p50_ms']:.3f} ms vs {theirs['p50_ms']:.3f} ms (first round "
                                  f"{mine.get('first_round_p50_ms', 0):.3f} vs "
                                  f"{theirs.get('first_round_p50_ms', 0):.3f}),"
                                  f" recall {mine['recall_at_10']:.3f} vs {theirs['recall_at_10']:.3f}")
        hnsw = _serve(report, size, "kb-hnsw")
        if hnsw and int(size) >= 1_000_000:
            add(f"{size}: kb-hnsw recall@10", hnsw["similarity"]["recall_at_10"], 0.95, "higher", "")
            add(f"{size}: kb-hnsw p50 ms", hnsw["similarity"]["p50_ms"], 5.0, "lower", "")
        lc_ingest = peers.get("langchain-faiss", {}).get("ingest")
        rounds = report.get("ingest_rounds", {}).get(size, {})
        # with its BM25 index; vector-only like LangChain's FAISS; and as LangChain users write (lists of floats)
        for name in ("kb-flat", "kb-flat-vectors", "kb-flat-lists"):
            kb_ingest = peers.get(name, {}).get("ingest")
            single = f"{kb_ingest['chunks_per_second']:,.0f} vs {lc_ingest['chunks_per_second']:,.0f} chunks/s" \
                if kb_ingest and lc_ingest else ""
            if rounds.get(name) and rounds.get("langchain-faiss"):
                # the median of the rounds' ratios (each round's runs back to back)
                ratios = sorted(lc / mine for lc, mine in zip(rounds["langchain-faiss"], rounds[name], strict=True))
                settle = report.get("ingest_settle", {}).get(size, {}).get(name) or []
                after = (f"; its WAL checkpoint ended {min(settle):.2f}-{max(settle):.2f} s after"
                         if max(settle, default=0.0) >= 0.005 else "")
                add(f"{size}: {name} ingest / langchain-faiss ingest (chunks/s, median of {len(ratios)} rounds)",
                    ratios[len(ratios) // 2], 3.0, "higher",
                    "rounds " + ", ".join(f"{r:.2f}x" for r in ratios) + after
                    + (f"; single run {single}" if single else ""))
            elif kb_ingest and lc_ingest:
                add(f"{size}: {name} ingest / langchain-faiss ingest (chunks/s)",
                    kb_ingest["chunks_per_second"] / lc_ingest["chunks_per_second"], 3.0, "higher", single)
    for size, scale in report.get("scale", {}).items():
        large = int(size) >= 1_000_000
        keyword = scale["keyword"]
        if large:
            add(f"{size}: keyword p50 ms", keyword["kb"]["p50_ms"], 10.0, "lower", "")
            add(f"{size}: hybrid p50 ms", scale["hybrid"]["p50_ms"], 15.0, "lower", "")
        add(f"{size}: keyword p50 kb / bm25s (side by side)", keyword["kb_over_bm25s_p50"], 1.0, "lower",
            f"{keyword['kb']['p50_ms']:.2f} ms vs {keyword['bm25s']['p50_ms']:.2f} ms, "
            f"top-10 overlap {keyword['top10_overlap']:.2f}")
        for label, figures in scale["filtered"].items():
            add(f"{size}: filtered similarity {label} ({figures['selectivity']:.2%}) p50 ms", figures["p50_ms"],
                5.0 if large else 2.0, "lower", f"recall@10 {figures['recall_at_10']:.3f}")
            add(f"{size}: filtered similarity {label} recall@10", figures["recall_at_10"], 0.95, "higher", "")
    for size, rows in report["rest"].items():
        if "kb_recall_at_10" in rows:
            add(f"{size}: REST kb recall@10 (HNSW)", rows["kb_recall_at_10"], 0.95, "higher",
                f"chroma server {rows.get('chroma-server_recall_at_10', float('nan')):.3f}")
        kb_rows = {r["clients"]: r for r in rows["kb"]}
        chroma_rows = {r["clients"]: r for r in rows["chroma-server"]}
        if int(size) >= 100_000 and 1 in kb_rows:
            add(f"{size}: REST kb p50 ms (1 client)", kb_rows[1]["p50_ms"], 5.0, "lower", "")
        for clients in (4, 16):
            if clients in kb_rows and clients in chroma_rows:
                add(f"{size}: REST kb QPS / chroma server QPS, {clients} clients",
                    kb_rows[clients]["qps"] / chroma_rows[clients]["qps"], 1.0, "higher",
                    f"{kb_rows[clients]['qps']:.0f} vs {chroma_rows[clients]['qps']:.0f} q/s")
    e2e = report.get("e2e") or {}
    if e2e:
        add("end to end: kb ingest / bare model time", e2e["kb_over_bare"], 1.1, "lower",
            f"{e2e['kb_ingest_seconds']:.1f} s vs {e2e['bare_model_seconds']:.1f} s")
        add("repeated query text: cached p50 ms / first ms", e2e["query_repeated_p50_ms"] / e2e["query_first_ms"],
            0.5, "lower", f"{e2e['query_repeated_p50_ms']:.2f} ms vs {e2e['query_first_ms']:.2f} ms")
    return checks


def print_summary(report: dict[str, Any]) -> None:
    print(f"\nmachine: {report['machine']}")
    for size, peers in report["sizes"].items():
        print(f"\n{int(size):,} chunks   ingest chunks/s | disk B/chunk | cold open s | sim p50/p99 ms | recall@10 "
              "| filtered p50 | hybrid p50 | serve RSS MB")
        for peer, entry in peers.items():
            ingest, serve = entry["ingest"], entry["serve"]
            sim = serve["similarity"]
            filtered = serve.get("filtered_similarity", {}).get("p50_ms")
            hybrid = serve.get("hybrid", {}).get("p50_ms")
            print(f"  {peer:<17} {ingest['chunks_per_second']:>10,.0f} | {ingest['disk_bytes_per_chunk']:>8,.0f} | "
                  f"{serve['cold_open_seconds']:>6.2f} | {sim['p50_ms']:6.2f} / {sim['p99_ms']:6.2f} | "
                  f"{sim['recall_at_10']:.3f} | {filtered if filtered is None else round(filtered, 2)!s:>6} | "
                  f"{hybrid if hybrid is None else round(hybrid, 2)!s:>6} | {serve['peak_rss_mb']:,.0f}")
        side_by_side = report.get("compare", {}).get(size, {})
        if side_by_side:
            print("  side by side in one process (similarity p50 ms / first-round p50 ms, recall@10): " + ", ".join(
                f"{name} {fig['p50_ms']:.3f} / {fig.get('first_round_p50_ms', float('nan')):.3f} "
                f"({fig['recall_at_10']:.3f})" for name, fig in side_by_side.items()))
    for size, rows in report.get("rest", {}).items():
        print(f"\nREST, {int(size):,} chunks (query vector, k=10):")
        for name in ("kb", "chroma-server"):
            print(f"  {name:<14} " + " | ".join(f"{r['clients']:>2} clients {r['qps']:6.0f} q/s p50 {r['p50_ms']:.2f} "
                                                f"p99 {r['p99_ms']:.2f} ms" for r in rows[name])
                  + f" | recall@10 {rows.get(name + '_recall_at_10', float('nan')):.3f}")
    print("\ntargets:")
    for check in report["targets"]:
        print(f"  {'PASS' if check['ok'] else 'MISS'}  {check['target']}: {check['value']} "
              f"(limit {check['limit']}) {check['detail']}")
