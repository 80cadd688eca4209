"""kb's layers, bottom to top, and what each may import (ARCHITECTURE.md).

    kb_base  →  stores  →  writers  →  kb  →  benchmarks  →  api

A module may import its own layer and the layers below it, never one above, anywhere in the module: at the top,
inside a function, under ``if TYPE_CHECKING:``, or by name through ``importlib`` (``"pkg.module:attr"``
strings count too, as the store factory and the CLI use them). Read from the sources with ``ast``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kb_base", "stores", "writers", "kb", "benchmarks", "api")
DRIVERS = ("faiss", "chroma", "elasticsearch", "azure_search")
# stores/ at its top: the protocol, the factory and machinery shared by the drivers (no driver code)
STORES_TOP = {"__init__", "base", "factory", "generations", "langchain", "record_batch", "record_checks",
              "columnar_filter"}
# In-function imports of kb's own code, each for a reason: a heavy dependency loaded only when needed.
LAZY_IMPORTS = {
    "kb": "import kb stays free of pyarrow and Ray's glue: kb.RayEngine and kb.LocalEngine load on first use",
    "api.cli": "kb --help and kb keys start without faiss, LangChain or the model",
    "kb.client": "the remote client and rerankers import httpx (0.2 s with the rich it pulls in): only when used",
    "kb.local_minilm": "the ONNX graph builder (onnx) runs once per machine",
    "stores.keyword.batch": "numba kernels compile on first use: a reader never loads numba",
    "writers.extract.registry": "one document parser per format (pypdfium2, python-docx, ...), loaded by need",
}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


DYNAMIC = re.compile(r"[a-z_]+(\.[a-z_0-9]+)+:[A-Za-z_]\w*")


def _is_module(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _ours(module: str) -> bool:
    return module.split(".")[0] in LAYERS


def _imports(name: str, path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, inside a function?) for every import of kb's own code in the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        found: list[str] = []
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*parts, node.module] if node.module else parts)
            else:
                source = node.module or ""
            # "from stores.keyword import doc_blocks" imports the module stores.keyword.doc_blocks
            found = [f"{source}.{alias.name}" if _is_module(f"{source}.{alias.name}") else source
                     for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DYNAMIC.fullmatch(node.value):
            found = [node.value.split(":")[0]]  # "stores.faiss.store:FaissStore", "api.cli_sync:main"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found = [node.args[0].value]
        for module in found:
            if _ours(module):
                yield module, id(node) in in_function


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_the_layers_are_the_whole_tree() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "fixtures", "docs"}
    assert packages == set(LAYERS)


def test_the_package_build_takes_every_layer() -> None:
    """pyproject's package list names every layer and every subpackage, or an installed kb misses modules."""
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(find_packages(where=str(ROOT), include=include))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for layer in LAYERS for p in (ROOT / layer).rglob("__init__.py")}
    assert on_disk - packaged == set() and packaged - on_disk == set()


def test_the_wheel_holds_every_file_of_every_layer() -> None:
    """Every file under a layer (the console's HTML, JS and CSS as much as the modules) is in the built wheel:
    an editable install reads them from the tree, an installed kb only from what pyproject packages."""
    from tests.support.wheel import build_wheel, source_files, wheel_names

    in_wheel = wheel_names(build_wheel())
    shipped = {name for name in source_files() if name.split("/")[0] in LAYERS}
    assert any(not name.endswith(".py") for name in shipped)  # the console at least: the check has teeth
    assert sorted(shipped - in_wheel) == []
    assert any(name.startswith("kb-") and name.endswith(".dist-info/entry_points.txt") for name in in_wheel)


def test_no_module_imports_a_layer_above_its_own() -> None:
    offenders = {name: sorted({m for m, _ in _imports(name, path) if _layer(m) > _layer(name)})
                 for name, path in _modules()}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_base_layer_imports_only_itself() -> None:
    offenders = {name: sorted({m for m, _ in _imports(name, path) if not m.startswith("kb_base")})
                 for name, path in _modules() if name.startswith("kb_base")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_stores_holds_packages_per_store_and_no_loose_driver_files() -> None:
    loose = {p.stem for p in (ROOT / "stores").glob("*.py")}
    assert loose == STORES_TOP
    for driver in DRIVERS:
        assert (ROOT / "stores" / driver / "__init__.py").exists()
        assert (ROOT / "stores" / driver / "store.py").exists()
        assert (ROOT / "stores" / driver / "langchain.py").exists()


def test_a_store_package_never_imports_another_store_package() -> None:
    offenders: dict[str, list[str]] = {}
    for name, path in _modules():
        parts = name.split(".")
        if parts[0] != "stores":
            continue
        own = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in DRIVERS) else None
        bad = sorted({m for m, _ in _imports(name, path) if m.split(".")[0] == "stores" and len(m.split(".")) > 1
                      and m.split(".")[1] in DRIVERS and m.split(".")[1] != own
                      and name != "stores.factory"})  # the factory names every driver (by string)
        if bad:
            offenders[name] = bad
    assert offenders == {}


def test_the_keyword_engine_is_used_through_its_public_surface() -> None:
    import stores.keyword

    offenders = {name: sorted({m for m, _ in _imports(name, path) if m.startswith("stores.keyword.")})
                 for name, path in _modules() if not name.startswith("stores.keyword")}
    assert {name: found for name, found in offenders.items() if found} == {}
    assert set(stores.keyword.__all__) == {"KeywordIndex", "NoKeywordIndex", "PendingKeywords"}
    assert "kw_segments" in (stores.keyword.__doc__ or "")  # the on-disk format is documented where it lives


def test_imports_of_our_own_code_sit_at_the_top_of_modules() -> None:
    """Imports inside functions dodge import cycles; with the layers, only heavy dependencies are lazy."""
    lazy = {name for name, path in _modules() if any(inside for _, inside in _imports(name, path))}
    lazy -= {name for name in lazy if name.startswith("benchmarks.")}  # each benchmark loads only its peers
    assert lazy == set(LAZY_IMPORTS)


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh set of kb's modules: an import cycle fails here whatever the order.

    One interpreter keeps the third-party libraries loaded and drops kb's own modules before each import."""
    script = textwrap.dedent(f"""
        import importlib, sys
        import prometheus_client
        modules = {sorted(name for name, _ in _modules())!r}
        failed = {{}}
        for module in modules:
            for name in [n for n in sys.modules if n.split(".")[0] in {LAYERS!r}]:
                del sys.modules[name]
            # api.metrics registers its metrics at import: forget them before it runs again
            for collector in list(prometheus_client.REGISTRY._collector_to_names):
                prometheus_client.REGISTRY.unregister(collector)
            try:
                importlib.import_module(module)
            except Exception as exc:
                failed[module] = f"{{type(exc).__name__}}: {{exc}}"
        print(failed)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{}"


def _runtime_uses_of_type_checking_names(path: Path) -> list[str]:
    """Names imported only under ``if TYPE_CHECKING:`` but used outside annotations: a NameError at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    only_typing: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            only_typing |= {alias.asname or alias.name.split(".")[0] for n in ast.walk(node)
                            if isinstance(n, ast.Import | ast.ImportFrom) for alias in n.names}
    typing_block_names = {id(n) for node in tree.body if isinstance(node, ast.If)
                          and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    imported_elsewhere = {alias.asname or alias.name.split(".")[0] for n in ast.walk(tree)  # e.g. in a function
                          if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in typing_block_names
                          for alias in n.names}
    in_annotations: set[int] = set()
    for node in ast.walk(tree):
        annotations = [getattr(node, "annotation", None), getattr(node, "returns", None)]
        for annotation in annotations:
            if annotation is not None:
                in_annotations |= {id(inner) for inner in ast.walk(annotation)}
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.id}" for node in ast.walk(tree)
            if isinstance(node, ast.Name) and node.id in only_typing - imported_elsewhere
            and id(node) not in in_annotations and id(node) not in typing_block_names]


def test_names_imported_for_type_checking_are_only_annotations() -> None:
    """Same-layer cycles are broken with ``if TYPE_CHECKING:`` imports; using such a name at run time fails."""
    assert [use for _, path in _modules() for use in _runtime_uses_of_type_checking_names(path)] == []


def test_the_type_checking_reader_sees_a_runtime_use(tmp_path: Path) -> None:
    path = ROOT / "tests" / "_layering_probe.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kb.remote import RemoteProject\n"
                    "def f(p: RemoteProject) -> RemoteProject:\n    return RemoteProject(p.transport, 'X')\n")
    try:
        assert _runtime_uses_of_type_checking_names(path) == ["tests/_layering_probe.py:5: RemoteProject"]
    finally:
        path.unlink()


def test_every_module_named_by_string_exists() -> None:
    """The factory's drivers and the CLI's subcommands are named as ``"module:attr"``: each must resolve."""
    import importlib

    named = {node.value for _, path in _modules() for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and DYNAMIC.fullmatch(node.value)
             and _ours(node.value)}
    assert {"stores.faiss.store:FaissStore", "api.cli_sync:main", "benchmarks.suite:main"} <= named
    missing = [target for target in sorted(named)
               if not callable(getattr(importlib.import_module(target.split(":")[0]), target.split(":")[1], None))]
    assert missing == []


@pytest.mark.parametrize("command", ["ingest", "sync", "export", "import", "eval", "bench"])
def test_each_subcommand_answers_help_through_the_kb_command(command: str, capsys: pytest.CaptureFixture) -> None:
    from api.cli import main

    try:
        status = main([command, "--help"])
    except SystemExit as exc:  # argparse's --help
        status = exc.code
    assert status in (0, None)
    assert f"kb {command}" in capsys.readouterr().out


@pytest.mark.parametrize("source, expected", [
    ("from kb.core import CoreKnowledgeBank\n", {("kb.core", False)}),
    ("def f():\n    import api.app\n", {("api.app", True)}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from writers.writer import W\n",
     {("writers.writer", False)}),
    ("DRIVERS = {'X': 'stores.faiss.store:FaissStore'}\n", {("stores.faiss.store", False)}),
    ("import importlib\ndef f():\n    importlib.import_module('benchmarks.suite')\n", {("benchmarks.suite", True)}),
    ("from . import reader\nfrom .codec import x\n", {("stores.chroma.reader", False), ("stores.chroma.codec", False)}),
    ("import numpy\nfrom os import path\nMESSAGE = 'see: kb docs'\nLOG = 'kb: no checkpoint of %s: %s'\n", set()),
])
def test_the_import_reader_sees_every_kind_of_import(tmp_path: Path, source: str, expected: set) -> None:
    path = tmp_path / "store.py"
    path.write_text(source)
    assert set(_imports("stores.chroma.store", path)) == expected
    assert all(_layer(m) > _layer("kb_base") for m, _ in expected)  # each would break the base layer's rule


def test_the_remote_client_lives_in_kb() -> None:
    assert not (ROOT / "api" / "remote.py").exists()
    import kb
    from kb.remote import RemoteClient

    assert isinstance(kb.api_client(url="http://127.0.0.1:9", api_key="kb_x_y"), RemoteClient)


def test_the_public_names_stay_where_users_find_them() -> None:
    """``import kb`` alone gives every public name, ``kb.errors`` (a documented module) among them."""
    script = textwrap.dedent("""
        import kb
        from kb_base import errors
        assert kb.errors.DiskFullError is errors.DiskFullError and kb.NotFoundError is errors.NotFoundError
        assert set(kb.errors.__all__) == {n for n, v in vars(errors).items()
                                          if isinstance(v, type) and issubclass(v, Exception)}
        assert kb.SearchRequest.__module__ == "kb_base.search" and kb.api_client.__module__ == "kb.client"
        assert all(hasattr(kb, name) for name in kb.__all__)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]
