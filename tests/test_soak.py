"""The short soak: ``python -m benchmarks.soak`` for 30 s against a real ``kb serve --workers 2``, the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ROOT


@pytest.mark.slow
def test_a_short_soak_has_no_errors_and_reads_its_figures_from_metrics(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    finished = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--seconds", "30", "--interval", "10",
                               "--settings-every", "8", "--workers", "2", "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=400, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              check=False)
    assert out.exists(), finished.stdout[-2000:] + finished.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["closed_connections"] == 0
    log = tmp_path / "soak-serve.log"  # kb serve's output, kept beside the JSON
    assert figures["server_log"] == str(log) and "kb serve --workers 2" in log.read_text()
    assert "worker process" not in log.read_text()  # no worker died or was replaced
    assert finished.returncode == 0, finished.stdout[-2000:]
    every_kind = {"similarity", "vector", "threshold", "mmr", "keyword", "hybrid", "filtered", "count", "upsert",
                  "delete", "get", "settings", "ingest"}
    assert every_kind <= set(figures["operations"]), figures["operations"]
    assert len(figures["intervals"]) == 3
    for row in figures["intervals"]:
        assert row["requests"] > 50 and row["errors"] == 0  # as counted by the service's own /metrics
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["rss_mb"] > 100
    assert figures["rss_within_bound"], figures["rss_growth_after_warmup_mb"]
