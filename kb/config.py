"""Where kb keeps its data.

``$KB_HOME`` holds everything: ``catalog.sqlite`` (projects, knowledge banks
and their settings, managed folders, connections), ``cache/`` (embedding
cache) and ``projects/<KEY>/`` with one folder per knowledge bank and per
managed folder. When ``KB_HOME`` is unset it is ``$XDG_DATA_HOME/kb``, or
``~/.local/share/kb``.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    explicit = os.environ.get("KB_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "kb"
