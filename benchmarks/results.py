"""What every benchmark script ends with: its figures as JSON on disk (``benchmarks.suite.cpu_flags`` names the
machine they were measured on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(path: Path, results: Any) -> None:
    """The results as indented JSON at ``path`` (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")

