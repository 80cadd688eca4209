"""Without Ray installed (the extra kb[ray]), every way in says how to install it, and nothing else breaks.

The missing package is real to the interpreter: each check runs in a fresh process where ``import ray`` fails
(``sys.modules["ray"] = None``, what Python does for a module it cannot import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kb
from tests.support.ray_cluster import ROOT, cluster_env

BLOCK_RAY = "import sys; sys.modules['ray'] = None; sys.modules['ray.data'] = None\n"


def run_without_ray(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_RAY + code], cwd=ROOT, env=cluster_env(),
                          capture_output=True, text=True, timeout=300)


def test_sync_and_ingest_with_ray_say_how_to_install_it(tmp_path: Path) -> None:
    home, docs = tmp_path / "home", tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text.")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "a row"}) + "\n")
    client = kb.api_client(home=home)
    client.get_default_project().create_knowledge_bank("docs", embedding_llm_id="local:all-MiniLM-L6-v2")
    client.close()
    done = run_without_ray(f"""
from api.cli import main
codes = [main(["sync", {str(docs)!r}, "--kb", "docs", "--home", {str(home)!r}, "--ray", "auto", "--quiet"]),
         main(["ingest", {str(rows)!r}, "--kb", "docs", "--home", {str(home)!r}, "--ray", "auto", "--quiet"])]
import kb
try:
    kb.RayEngine(address="auto")
except kb.MissingExtraError as exc:
    codes.append(str(exc))
# without --ray the same commands work, Ray or not
codes.append(main(["sync", {str(docs)!r}, "--kb", "docs", "--home", {str(home)!r}, "--quiet"]))
print(codes)
""")
    assert done.returncode == 0, done.stderr[-3000:]
    codes = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own subprocess printed a list literal
    assert codes[:2] == [2, 2] and "pip install 'kb[ray]'" in codes[2] and codes[3] == 0
    assert done.stderr.count("pip install 'kb[ray]'") == 2  # kb sync and kb ingest, each on stderr
    assert "kb sync: " in done.stderr and "kb ingest: " in done.stderr
