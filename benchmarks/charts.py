"""PNG charts of a ``kb bench`` report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def _peers(report: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for peers in report["sizes"].values():
        names += [p for p in peers if p not in names]
    return names


def latency_chart(report: dict[str, Any], path: Path) -> None:
    sizes = list(report["sizes"])
    peers = _peers(report)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        names = [p for p in peers if p in report["sizes"][size]]
        sims = [report["sizes"][size][p]["serve"]["similarity"] for p in names]
        x = range(len(names))
        ax.bar([i - 0.27 for i in x], [s["p50_ms"] for s in sims], 0.27, label="p50")
        ax.bar(list(x), [s["p95_ms"] for s in sims], 0.27, label="p95")
        ax.bar([i + 0.27 for i in x], [s["p99_ms"] for s in sims], 0.27, label="p99")
        ax.set_xticks(list(x), [f"{n}\nrecall {s['recall_at_10']:.2f}" for n, s in zip(names, sims, strict=True)],
                      rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms per query (k=10), log scale")
        ax.set_title(f"similarity search, {int(size):,} chunks, in process")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_chart(report: dict[str, Any], path: Path) -> None:
    sizes = [int(s) for s in report["sizes"]]
    fig, (ingest_ax, qps_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for peer in _peers(report):
        points = [(int(s), e[peer]) for s, e in report["sizes"].items() if peer in e]
        xs = [s for s, _ in points]
        ingest_ax.plot(xs, [e["ingest"]["chunks_per_second"] for _, e in points], marker="o", label=peer)
        qps_ax.plot(xs, [e["serve"]["similarity"]["qps"] for _, e in points], marker="o", label=peer)
    for ax, title, label in ((ingest_ax, "ingestion, precomputed embeddings", "chunks per second"),
                             (qps_ax, "single-client search throughput", "queries per second")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.set_xlabel("corpus size (chunks)")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rest_chart(report: dict[str, Any], path: Path) -> None:
    sizes = list(report["rest"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for name, rows in report["rest"][size].items():
            if isinstance(rows, list):  # the other entries are recall figures
                recall = report["rest"][size].get(f"{name}_recall_at_10")
                label = name if recall is None else f"{name} (recall@10 {recall:.3f})"
                ax.plot([r["clients"] for r in rows], [r["qps"] for r in rows], marker="o", label=label)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("queries per second")
        ax.set_title(f"REST search by vector, {int(size):,} chunks")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def side_by_side_chart(report: dict[str, Any], path: Path) -> None:
    """p50 similarity latency of every peer against corpus size, from the one-process side-by-side runs."""
    sizes = [int(s) for s in report["compare"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names: list[str] = []
    for figures in report["compare"].values():
        names += [n for n in figures if n not in names]
    for name in names:
        points = [(int(s), f[name]) for s, f in report["compare"].items() if name in f]
        ax.plot([s for s, _ in points], [f["p50_ms"] for _, f in points], marker="o",
                linestyle="--" if name.startswith(("faiss-", "langchain-")) else "-",
                label=f"{name} (recall@10 {min(f['recall_at_10'] for _, f in points):.3f}+)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.set_xlabel("corpus size (chunks)")
    ax.set_ylabel("p50 ms per query (k=10), log scale")
    ax.set_title("similarity search in process, peers side by side")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(report: dict[str, Any], folder: Path) -> list[Path]:
    made = []
    if report.get("compare"):
        side_by_side_chart(report, folder / "side_by_side.png")
        made.append(folder / "side_by_side.png")
    if report["sizes"]:
        for name, chart in (("latency.png", latency_chart), ("throughput.png", throughput_chart)):
            chart(report, folder / name)
            made.append(folder / name)
    if report["rest"]:
        rest_chart(report, folder / "rest.png")
        made.append(folder / "rest.png")
    return made
