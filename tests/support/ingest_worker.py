"""Runs one ingestion in its own process (for the crash-and-rerun test), with the fake embedding model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from langchain_core.embeddings import DeterministicFakeEmbedding

import kb
from kb.custom_models import LangChainEmbeddingModel
from writers.ingest import IngestOptions, ingest


def main() -> None:
    home, kb_id, path = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    client = kb.api_client(home=home)
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    core = client.get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank()
    report = ingest(core, path, IngestOptions(id_column="id", chunk_size=200, chunk_overlap=20, commit_every=3000),
                    progress=False)
    print(json.dumps(report.to_dict()))


if __name__ == "__main__":
    main()
