"""The documentation: the MkDocs site builds with --strict, the README stays a short tour whose links resolve,
the REST reference lists every route of the service, and the source files the docs name exist."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_PATH = re.compile(r"`((?:kb|kb_base|stores|writers|api|benchmarks|tests|fixtures|docs)/[\w./-]*)`")
MODULE = re.compile(r"python -m ([\w.]+)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


def prose(markdown: str) -> str:
    """The Markdown without its fenced code blocks (links in code are not links)."""
    return FENCE.sub("", markdown)


def github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def built_page(site: Path, source: Path) -> Path:
    """Where a docs/ page lands in the built site (MkDocs' directory URLs)."""
    relative = source.relative_to(DOCS).with_suffix("")
    return site / (relative.parent if relative.name == "index" else relative) / "index.html"


def test_the_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    for page in DOCS.rglob("*.md"):
        if page.parts[len(DOCS.parts)] not in ("hooks",) and page != DOCS / "benchmarks" / "bench.md":
            assert built_page(site, page).is_file(), f"{page} was not built"


def test_the_readme_is_at_most_300_lines() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move sections into docs/ and link them"


def test_every_relative_link_in_the_readme_resolves(site: Path) -> None:
    readme = README.read_text()
    own_anchors = {github_slug(h) for h in re.findall(r"^#+ (.+)$", prose(readme), re.M)}
    links = [target for target in LINK.findall(prose(readme)) if not re.match(r"[a-z]+:", target)]
    assert len(links) > 20, links
    for target in links:
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in own_anchors, f"README.md links to #{anchor}, which is no heading of it"
            continue
        file = (ROOT / path).resolve()
        assert file.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert file.suffix == ".md" and DOCS in file.parents, f"README.md: an anchor outside docs/: {target}"
            page = built_page(site, file).read_text()
            assert f'id="{anchor}"' in page, f"README.md links to {target}, but that page has no #{anchor}"


def test_the_readme_keeps_the_tour() -> None:
    readme = README.read_text()
    for anchor in ("## The two commands", "## A five-minute tour", "### Python", "### A folder of documents",
                   "### A LangChain RAG chain that cites document and page", "### REST with curl",
                   "### The command line", "### The web console", "## Documentation", "## Links",
                   "import json\n\nfrom langchain_core.output_parsers", "make serve", "make test"):
        assert anchor in readme, anchor


def test_the_rest_reference_lists_every_route(site: Path, tmp_path: Path) -> None:
    from api.app import create_app
    from api.config import ServiceSettings

    schema = create_app(ServiceSettings(home=tmp_path, warmup=False)).openapi()
    page = html.unescape((site / "rest-reference" / "index.html").read_text())
    operations = [(method.upper(), path) for path, item in schema["paths"].items() for method in item
                  if method in ("get", "put", "post", "patch", "delete")]
    assert len(operations) > 20
    missing = [f"{m} {p}" for m, p in operations if f"<code>{m} {p}</code>" not in page]
    assert not missing, f"the REST reference lacks {missing}"
    for name in schema["components"]["schemas"]:
        assert f'id="schema-{name.lower()}"' in page, name
    assert 'href="#schema-searchin"' in page and "semantic_hybrid" in page


def test_the_reference_hook_fails_the_build_when_the_app_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from mkdocs.exceptions import PluginError

    spec = importlib.util.spec_from_file_location("openapi_reference_hook", DOCS / "hooks" / "openapi_reference.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    monkeypatch.setitem(sys.modules, "api.app", None)  # any import of api.app now fails
    before = {name: os.environ.get(name) for name in ("KB_HOME", "KB_WARMUP", "HF_HUB_OFFLINE")}
    with pytest.raises(PluginError, match="cannot build the REST reference"):
        hook.load_schema(ROOT)
    assert {name: os.environ.get(name) for name in before} == before, "the hook must restore the environment"


def test_the_source_files_and_modules_the_docs_name_exist() -> None:
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    named = {(page.name, path) for page in pages for path in CODE_PATH.findall(page.read_text())}
    assert len(named) > 30
    missing = sorted(f"{page}: {path}" for page, path in named if not (ROOT / path).exists())
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)
    modules = {(page.name, m) for page in pages for m in MODULE.findall(page.read_text()) if m != "mkdocs"}
    gone = sorted(f"{page}: python -m {m}" for page, m in modules
                  if not (ROOT / (m.replace(".", "/") + ".py")).exists() and not (ROOT / m.replace(".", "/")).is_dir())
    assert not gone, "the docs run modules that do not exist:\n" + "\n".join(gone)
