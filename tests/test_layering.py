"""The dependency runs one way: ``api/`` (the server, console and CLI) uses ``kb/``, never the reverse.

Read from the sources with ``ast``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_kb_stores_and_writers_never_import_api() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m == "api" or m.startswith("api."))
                 for package in ("kb", "stores", "writers") for path in (ROOT / package).rglob("*.py")}
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_the_remote_client_lives_in_kb() -> None:
    assert not (ROOT / "api" / "remote.py").exists()
    import kb
    from kb.remote import RemoteClient

    assert isinstance(kb.api_client(url="http://127.0.0.1:9", api_key="kb_x_y"), RemoteClient)
