"""Runs one folder sync in its own process (the kill-and-resume test), with the fake embedding model.

    python -m tests.support.sync_worker HOME KB_ID DIRECTORY [CRASH_AFTER_COMMITS]

With CRASH_AFTER_COMMITS the process dies with ``os._exit(137)`` right after
that many commits: no cleanup, no lock release by Python, like a SIGKILL.
Otherwise it prints the report as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from langchain_core.embeddings import DeterministicFakeEmbedding

import kb
from kb.custom_models import LangChainEmbeddingModel
from writers.sync import SyncOptions, SyncReport, sync_folder


def main() -> None:
    home, kb_id, directory = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    crash_after = int(sys.argv[4]) if len(sys.argv) > 4 else 0

    def on_progress(report: SyncReport) -> None:
        if crash_after and report.commits >= crash_after:
            os._exit(137)

    client = kb.api_client(home=home)
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    core = client.get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank()
    options = SyncOptions(extraction="structured", screenshots=True, chunk_size=200, chunk_overlap=20,
                          batch_files=2)
    report = sync_folder(core, directory, options, on_progress=on_progress)
    print(json.dumps(report.to_dict()))


if __name__ == "__main__":
    main()
