"""Where kb keeps its data.

``$KB_HOME`` holds what one machine keeps: ``catalog.sqlite`` (projects, knowledge banks and their settings,
managed folders, connections, API keys) unless ``KB_DATABASE_URL`` names a shared catalog database,
``cache/`` (embedding cache) and ``projects/<KEY>/`` with one folder per knowledge bank and per managed
folder (managed folders go under ``KB_FOLDERS_ROOT`` when it is set). When ``KB_HOME`` is unset it is
``$XDG_DATA_HOME/kb``, or ``~/.local/share/kb``.
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


def database_url() -> str | None:
    """``KB_DATABASE_URL``: the shared catalog database of a multi-server deployment (None: SQLite in the home)."""
    return os.environ.get("KB_DATABASE_URL", "").strip() or None


def folders_root() -> Path | None:
    """``KB_FOLDERS_ROOT``: where managed folders live (a shared file system with several servers)."""
    explicit = os.environ.get("KB_FOLDERS_ROOT", "").strip()
    return Path(explicit).expanduser() if explicit else None


def catalog_location(home: Path) -> str | Path:
    """The catalog a home uses: ``KB_DATABASE_URL`` when set, else ``<home>/catalog.sqlite``."""
    return database_url() or home / "catalog.sqlite"
