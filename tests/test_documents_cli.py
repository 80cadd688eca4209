"""``kb sync``: a local directory or a managed folder, progress bar, report, exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kb
from api.cli_sync import main
from stores.base import acquire_writer_lock
from tests.support.document_files import NESTED_MARKDOWN, corrupt_pdf

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # the local all-MiniLM-L6-v2 model embeds the chunks


def test_kb_sync_directory_then_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cookbook.md").write_text(NESTED_MARKDOWN)
    (docs / "notes.txt").write_text("Water the ferns on Tuesdays.")
    corrupt_pdf(docs / "broken.pdf")
    (docs / "moved.html").write_text('<html><head><meta http-equiv="refresh" content="0; url=notes.txt"></head></html>')
    client = kb.api_client(home=home)
    project = client.get_default_project()
    core = project.create_knowledge_bank("manuals-kb").as_core_knowledge_bank()
    client.close()

    # through the real `kb` entry point in its own process: progress bar on stderr, summary on stdout
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "api.cli", "sync", str(docs), "--kb", "manuals-kb", "--home",
                           str(home), "--extraction", "structured", "--report", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stderr[-2000:]  # one file failed
    assert "4 files: 2 added, 0 updated, 0 unchanged, 0 removed, 1 empty, 1 failed" in done.stdout
    assert "failed: /broken.pdf: not a readable PDF" in done.stderr
    assert "empty: /moved.html: a redirect page (to notes.txt)" in done.stderr
    assert "sync docs" in done.stderr and "files" in done.stderr  # tqdm's bar
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(report["added"]) == ["/cookbook.md", "/notes.txt"] and report["exit_status"] == 1

    (docs / "broken.pdf").unlink()
    args = ["--kb", core.id, "--home", str(home), "--quiet", "--extraction", "structured"]
    assert main([str(docs), *args]) == 0  # the empty page is not a failure
    assert "3 files: 0 added, 0 updated, 3 unchanged, 0 removed, 0 empty, 0 failed" in capsys.readouterr().out

    # a managed folder by name; another sync holding the knowledge bank; unknown names
    client = kb.api_client(home=home)
    folder = client.get_default_project().create_managed_folder("manuals")
    folder.upload_data("/fern.txt", b"Ferns like shade.")
    assert main(["manuals", *args]) == 0
    assert "1 files: 1 added" in capsys.readouterr().out
    lock = acquire_writer_lock(core.folder / "sync.lock", 1.0, core.id)
    try:
        assert main(["manuals", *args]) == 2
        assert "is busy: another folder sync is running" in capsys.readouterr().err
    finally:
        lock.close()
    assert main(["nowhere", *args]) == 2
    assert "neither a local directory nor a managed folder" in capsys.readouterr().err
    assert main([str(docs), "--kb", "nope", "--home", str(home)]) == 2
    assert "no knowledge bank with id or name 'nope'" in capsys.readouterr().err
    assert main([str(docs), *args, "--chunk-size", "ten"]) == 2  # argparse usage error
    client.close()
