"""Where the service processes of one ``kb serve`` share their Prometheus metrics (multi-process mode).

Set before ``prometheus_client`` is imported (it picks its value storage at import), by ``kb serve`` in
the parent process, so every uvicorn worker inherits it. The folder is emptied at start: files left by
a previous run would otherwise be summed into the new one's counters.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(home: Path, port: int) -> Path:
    """Use ``$PROMETHEUS_MULTIPROC_DIR`` if set, else ``$KB_HOME/run/metrics-<port>`` (one per server), emptied."""
    folder = Path(os.environ.get(ENV) or home / "run" / f"metrics-{port}")
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.suffix == ".db":
                entry.unlink(missing_ok=True)
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
    return folder
