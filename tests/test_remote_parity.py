"""The remote client has the embedded client's public surface, class by class, so parity cannot regress silently.

For each embedded class and its remote counterpart: every public method or property of one exists on the
other, and a method both have takes at least the embedded one's parameters, in the same order (the remote
one may add keyword parameters). What is deliberately on one side only is listed below with the reason; a
method added to one side without the other, or a renamed parameter, fails here. The behaviour behind the
names is tested over real HTTP in tests/test_remote_parity_http.py and tests/test_remote_parity_sync.py.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest

from kb.client import EmbeddedClient, Project
from kb.core import CoreKnowledgeBank
from kb.knowledge_bank import KnowledgeBankHandle, KnowledgeBankListItem, KnowledgeBankSettings
from kb.llm import EmbeddingQuery, KBEmbeddings, LLMHandle
from kb.remote import RemoteClient, RemoteKnowledgeBankListItem, RemoteProject
from kb.remote_folders import RemoteManagedFolder
from kb.remote_knowledge_bank import RemoteCoreKnowledgeBank, RemoteKnowledgeBankHandle, RemoteSettings, RemoteWriter
from kb.remote_llm import RemoteEmbeddingQuery, RemoteEmbeddings, RemoteLLM
from kb_base.folders import ManagedFolder
from writers.writer import KnowledgeBankWriter

OURS = ("kb", "kb_base", "writers", "stores")

# Embedded only, and why: each name reaches into this process (its stores, caches, model objects or files).
EMBEDDED_ONLY: dict[type, dict[str, str]] = {
    EmbeddedClient: {
        "home": "the embedded home directory",
        "folders_root": "this process's KB_FOLDERS_ROOT (the server has its own)",
        "catalog": "the embedded home's catalog database (the server reads its own)",
        "embedding_cache": "the embedding cache of this process (the server has its own)",
        "register_embedding_model": "an in-process model object cannot travel; register it in the server's "
                                    "configure_client, or add an openai-compatible connection",
        "list_llm_items": "plumbing behind project.list_llms()",
        "get_llm_handle": "plumbing behind project.get_llm()",
        "reranker_for": "the rerankers this process caches",
        "project_folder": "a directory of the embedded home",
        "knowledge_bank_folder": "a directory of the embedded home",
        "core_knowledge_bank": "the core-handle cache a service keeps (the REST app uses it)",
        "cached_store": "a store driver open in this process",
        "store_for": "opens a store driver in this process",
        "save_knowledge_bank_settings": "plumbing behind settings.save() (remote: PUT .../settings)",
    },
    CoreKnowledgeBank: {
        "driver": "the store driver, open in this process",
        "folder": "the knowledge bank's directory in the embedded home",
        "check_store": "kb doctor reads the store's files directly: run it on the server's home",
        "repair_store": "kb repair rewrites the store's files directly: run it on the server's home",
        "embedder": "the model object with this process's cache (remote: langchain_embeddings())",
        "search_context": "the search pipeline's per-settings state in this process",
        "searches_quickly": "whether a search can run on this process's event loop (a service's concern)",
        "prepare_records": "the embedded writer's record building (remote writes are sent as documents)",
        "sync_records": "folder sync's record manager, opened by the process that syncs (remote: the server's job)",
    },
    ManagedFolder: {
        "root": "the folder's directory on this machine (remote: local_file() downloads a copy)",
    },
    LLMHandle: {
        "embedder": "the model object with this process's cache",
    },
    Project: {"client": "the embedded client it belongs to (remote: its transport)"},
    KBEmbeddings: {"embedder": "the model object with this process's cache"},
    KnowledgeBankWriter: {
        "timeout": "the writer-lock wait (the remote writer takes the server's lock only for its one commit)",
    },
}

# Remote only, and why: the HTTP side of things.
REMOTE_ONLY: dict[type, dict[str, str]] = {
    RemoteClient: {"transport": "the HTTP transport", "url": "the server's address"},
    RemoteProject: {"transport": "the HTTP transport", "base": "the project's URL path",
                    "sibling": "another project of the same server (images folders across projects)"},
    RemoteKnowledgeBankHandle: {"project": "the remote project it belongs to", "base": "its URL path"},
    RemoteCoreKnowledgeBank: {"transport": "the HTTP transport", "handle": "its remote handle",
                              "ingest_file": "streams a file to POST .../ingest (the embedded side calls "
                                             "writers.ingest on the file itself)",
                              "commit": "sends a staged writer's operations as one POST .../commits"},
    RemoteManagedFolder: {"project": "the remote project", "transport": "the HTTP transport",
                          "base": "its files' URL path", "folder_base": "its URL path",
                          "put": "the upload behind upload_file and get_writer",
                          "manifest": "every file's sha256 computed on the server, so a client compares a "
                                      "directory without downloading (the embedded folder reads its files)"},
    RemoteLLM: {"transport": "the HTTP transport", "project_key": "the project it is listed in",
                "embed": "POST .../embeddings"},
    RemoteKnowledgeBankListItem: {"project": "the remote project it belongs to"},
    RemoteEmbeddingQuery: {"llm": "the remote model"},
    RemoteEmbeddings: {"llm": "the remote model"},
}

PAIRS = [
    (EmbeddedClient, RemoteClient),
    (Project, RemoteProject),
    (KnowledgeBankListItem, RemoteKnowledgeBankListItem),
    (KnowledgeBankHandle, RemoteKnowledgeBankHandle),
    (KnowledgeBankSettings, RemoteSettings),
    (CoreKnowledgeBank, RemoteCoreKnowledgeBank),
    (KnowledgeBankWriter, RemoteWriter),
    (ManagedFolder, RemoteManagedFolder),
    (LLMHandle, RemoteLLM),
    (EmbeddingQuery, RemoteEmbeddingQuery),
    (KBEmbeddings, RemoteEmbeddings),
]


def public_names(cls: type) -> set[str]:
    """Public methods and properties of the class, and the attributes its ``__init__`` sets on ``self``
    (or its dataclass fields), without what every object or a shared base class has."""
    names = {n for n in dir(cls) if not n.startswith("_")}
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] not in OURS:
            names -= set(dir(base))  # LangChain's Embeddings, object: the same on both sides
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and inspect.isfunction(init) and klass.__module__.split(".")[0] in OURS:
            names |= assigned_attributes(init)
    names |= set(getattr(cls, "__dataclass_fields__", {}))
    return {n for n in names if not n.startswith("_")}


def assigned_attributes(init: Any) -> set[str]:
    """``self.x = ...`` and ``self.a, self.b = ...`` in a constructor."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError):  # a generated __init__ (a dataclass's): its fields are counted instead
        return set()
    found = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            for item in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                    found.add(item.attr)
    return found


def parameters(function: Any) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def allowlisted(allowlist: dict[type, dict[str, str]], cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in allowlist.get(klass, {})}


def surface_gaps(embedded: type, remote: type) -> list[str]:
    gaps = []
    embedded_names, remote_names = public_names(embedded), public_names(remote)
    allowed_embedded, allowed_remote = allowlisted(EMBEDDED_ONLY, embedded), allowlisted(REMOTE_ONLY, remote)
    for name in sorted(embedded_names - remote_names - set(allowed_embedded)):
        gaps.append(f"{remote.__name__} lacks {embedded.__name__}.{name}")
    for name in sorted(remote_names - embedded_names - set(allowed_remote)):
        gaps.append(f"{embedded.__name__} lacks {remote.__name__}.{name}")
    for name in sorted(embedded_names & remote_names):
        mine, theirs = getattr(embedded, name, None), getattr(remote, name, None)
        if not (inspect.isfunction(mine) and inspect.isfunction(theirs)):
            continue
        wanted, given = parameters(mine), parameters(theirs)
        if given[:len(wanted)] != wanted and not set(wanted) <= set(given):
            gaps.append(f"{remote.__name__}.{name}{tuple(given)} does not take {embedded.__name__}.{name}"
                        f"{tuple(wanted)}")
        elif [p for p in given if p in wanted] != wanted:
            gaps.append(f"{remote.__name__}.{name} takes {embedded.__name__}.{name}'s parameters in another order")
    return gaps


@pytest.mark.parametrize(("embedded", "remote"), PAIRS, ids=[r.__name__ for _, r in PAIRS])
def test_the_remote_class_has_the_embedded_surface(embedded: type, remote: type) -> None:
    assert surface_gaps(embedded, remote) == []


def test_the_allowlists_name_only_what_exists() -> None:
    """A stale allowlist entry (a method renamed or given to the other side) would hide a future gap."""
    for cls, names in [*EMBEDDED_ONLY.items(), *REMOTE_ONLY.items()]:
        present = public_names(cls)
        assert set(names) <= present, f"{cls.__name__}: allowlisted but absent: {set(names) - present}"
    for embedded, remote in PAIRS:
        both = public_names(embedded) & public_names(remote)
        for cls in (embedded, remote):
            listed = set(EMBEDDED_ONLY.get(cls, {})) | set(REMOTE_ONLY.get(cls, {}))
            assert not listed & both, f"{cls.__name__}: allowlisted though both sides have {listed & both}"


def test_a_method_on_one_side_only_is_caught() -> None:
    """The negative controls: a new embedded method, a new remote method, a dropped or reordered parameter."""

    class NewEmbedded(ManagedFolder):
        def archive(self, path: str) -> None: ...

    class NewRemote(RemoteManagedFolder):
        def archive(self, path: str) -> None: ...

    class Renamed(RemoteManagedFolder):
        def upload_file(self, path: str, source: str) -> int: ...  # type: ignore[override]

    class Reordered(RemoteManagedFolder):
        def upload_file(self, local_file: str, path: str) -> int: ...  # type: ignore[override]

    assert surface_gaps(NewEmbedded, RemoteManagedFolder) == ["RemoteManagedFolder lacks NewEmbedded.archive"]
    assert surface_gaps(ManagedFolder, NewRemote) == ["ManagedFolder lacks NewRemote.archive"]
    assert "does not take" in " ".join(surface_gaps(ManagedFolder, Renamed))
    assert "another order" in " ".join(surface_gaps(ManagedFolder, Reordered))
