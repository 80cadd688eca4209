"""The web console in a real headless Chromium against a real `kb serve` (auth on, the real local model).

One scenario, as a person would use it: sign in, create a folder and a knowledge bank with a schema, point its
images at the folder, upload a JSONL file and an image, ingest the file and read the report, search with a filter
and see the expected hit with its image, see a filter error where the filter is, browse and delete a document,
evaluate on uploaded queries and qrels, then sign in with a reader key and see the 403 message. Screenshots of
the main pages go to docs/console/ with KB_CONSOLE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.browser import chromium
from tests.support.server import ADMIN_KEY, KBServer

ROOT = Path(__file__).resolve().parents[1]
# The README's screenshots are refreshed with KB_CONSOLE_SCREENSHOTS=1; otherwise a test run leaves the
# tracked files alone and writes its pictures to a temporary folder.
SHOTS = ROOT / "docs" / "console" if os.environ.get("KB_CONSOLE_SCREENSHOTS") == "1" else \
    Path(tempfile.gettempdir()) / "kb-console-screenshots"
IMAGE = ROOT / "fixtures" / "images" / "page1.png"
WAIT = 90  # seconds: the first ingestion loads the local model on a busy 2-core machine

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    server = KBServer(tmp_path_factory.mktemp("console")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as driver:
        driver.set_script_timeout(30)
        yield driver


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    image_ref = json.dumps({"type": "images", "content": ["/page1.png"]})
    rows = [
        {"id": "energy", "text": "Solar panels turn sunlight into electricity.", "topic": "energy"},
        {"id": "bees", "text": "Honeybees dance to tell each other where the flowers are.", "topic": "bio",
         "KB_MULTIMODAL_CONTENT": image_ref},
        {"id": "coffee", "text": "Espresso is brewed by forcing hot water through ground coffee.", "topic": "food"},
        {"id": "ants", "text": "Ants leave scent trails that lead the colony to food.", "topic": "bio"},
    ]
    out = {"rows": tmp_path / "rows.jsonl", "queries": tmp_path / "queries.jsonl", "qrels": tmp_path / "qrels.tsv"}
    out["rows"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["queries"].write_text(json.dumps({"_id": "q1", "text": "how do bees communicate"}) + "\n"
                              + json.dumps({"_id": "q2", "text": "making espresso"}) + "\n")
    out["qrels"].write_text("query-id\tcorpus-id\tscore\nq1\tbees#0\t1\nq2\tcoffee#0\t1\n")
    return out


def _wait(driver, css: str, text: str | None = None, seconds: float = WAIT):  # noqa: ANN001, ANN202
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, seconds)
    try:
        if text is None:
            return wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    except TimeoutException:  # say what the page showed instead
        page = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{css!r} did not show {text!r} within {seconds}s; the page shows:\n{page}") from None
    return driver.find_element(By.CSS_SELECTOR, css)


def _css(driver, css: str):  # noqa: ANN001, ANN202
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _select(element, value: str) -> None:  # noqa: ANN001
    from selenium.webdriver.support.ui import Select

    Select(element).select_by_value(value)


def _sign_in(driver, server: KBServer, key: str) -> None:  # noqa: ANN001
    driver.get(server.url + "/")
    field = _wait(driver, "#api-key")
    field.send_keys(key)
    _css(driver, "#signin button[type=submit]").click()
    _wait(driver, "#projects")


def _shot(driver, name: str) -> None:  # noqa: ANN001
    """The whole page (up to 2000 px tall): the window grows to the document for the picture."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height + 140, 700), 2000))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1280, 900)


def test_console_scenario(server: KBServer, browser, files: dict[str, Path]) -> None:  # noqa: ANN001
    driver = browser
    # Nothing but the static shell without a key: the API behind it answers 401.
    assert httpx.get(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/v1/whoami").status_code == 401
    driver.get(server.url + "/")
    _wait(driver, "#signin")
    _css(driver, "#api-key").send_keys("kb_nope_not-a-valid-secret-at-all")
    _css(driver, "#signin button[type=submit]").click()
    assert "invalid API key" in _wait(driver, "#signin-message", "invalid API key").text
    _shot(driver, "sign-in")

    _sign_in(driver, server, ADMIN_KEY)
    assert driver.execute_script("return sessionStorage.getItem('kb.apiKey')") == ADMIN_KEY
    assert driver.execute_script("return localStorage.length") == 0  # nothing outlives the session
    _css(driver, "#projects a").click()

    # a managed folder, then a knowledge bank with a metadata schema
    _wait(driver, "#create-folder")
    _css(driver, "#create-folder input[name=name]").send_keys("uploads")
    _css(driver, "#create-folder button").click()
    _wait(driver, "#folder-table", "uploads")
    _css(driver, "#create-kb input[name=name]").send_keys("guides")
    _select(_css(driver, "#create-kb select[name=model]"), "local:all-MiniLM-L6-v2")
    _css(driver, "#create-kb input[name=schema]").send_keys("topic=string")
    _css(driver, "#create-kb button").click()
    _wait(driver, "#overview")
    assert "topic" in _css(driver, "#schema").text and "string" in _css(driver, "#schema").text

    # images of retrieval content live in the folder
    folder_ref = _css(driver, "#images-folder option:nth-child(2)").get_attribute("value")
    _select(_css(driver, "#images-folder"), folder_ref)
    _css(driver, "#save-settings").click()
    _wait(driver, "#settings-message", "Settings saved.")
    _wait(driver, "#overview pre.json", folder_ref)

    # upload the rows and the image into the folder, then ingest the rows with progress and a report
    _css(driver, "#tab-ingest").click()
    _wait(driver, "#upload-file").send_keys(f"{files['rows']}\n{IMAGE}")
    _css(driver, "#upload button").click()
    _wait(driver, "#upload-message", "page1.png")
    _wait(driver, "#ingest-path", "/rows.jsonl")
    _select(_css(driver, "#ingest-path"), "/rows.jsonl")
    _css(driver, "#ingest input[name=id_column]").send_keys("id")
    _css(driver, "#metadata-columns").send_keys("topic,KB_MULTIMODAL_CONTENT")
    _css(driver, "#ingest button[type=submit]").click()
    report = _wait(driver, "#job-report", "chunks_written")
    rows = dict(line.rsplit(" ", 1) for line in report.text.splitlines() if " " in line)
    assert rows["rows_read"] == "4" and rows["rows_written"] == "4" and rows["rows_rejected"] == "0"
    assert "succeeded" in _css(driver, "#job-progress").text
    _shot(driver, "ingest")

    # search with a filter: the bee row, with its image shown inline
    _css(driver, "#tab-search").click()
    _wait(driver, "#query").send_keys("honeybees dance")
    _select(_css(driver, "#search-type"), "hybrid")
    _css(driver, "#filter").send_keys('{"topic": "bio"}')
    _css(driver, "#search button[type=submit]").click()
    first = _wait(driver, "#results article.hit")
    assert first.get_attribute("data-id") == "bees#0"
    hits = driver.find_elements("css selector", "#results article.hit")
    assert {h.get_attribute("data-id") for h in hits} == {"bees#0", "ants#0"}  # the filter kept only bio
    stages = first.find_element("css selector", "table.scores").text.lower()
    assert "dense" in stages and "keyword" in stages and "fused" in stages  # every stage's score
    loaded = driver.execute_script(
        "const img = document.querySelector('#results article.hit img.hit-image');"
        "return new Promise(done => { const check = () => img && img.src.startsWith('blob:') && img.complete"
        " ? done([img.src.slice(0, 5), img.naturalWidth]) : setTimeout(check, 100); check(); });")
    assert loaded[0] == "blob:" and loaded[1] > 0
    _shot(driver, "search")

    # a filter on an undeclared key: the error sits under the filter editor
    filter_box = _css(driver, "#filter")
    filter_box.clear()
    filter_box.send_keys('{"colour": "red"}')
    _css(driver, "#search button[type=submit]").click()
    message = _wait(driver, "#filter-message", "colour")
    assert "invalid_filter" in message.text
    filter_box.clear()
    filter_box.send_keys('{"topic": ')
    _css(driver, "#search button[type=submit]").click()
    assert "not valid JSON" in _wait(driver, "#filter-message", "not valid JSON").text

    # browse documents and delete one
    _css(driver, "#tab-documents").click()
    _wait(driver, "#document-table", "coffee#0")
    assert "of 4" in _css(driver, "#documents p.muted").text
    _css(driver, "#document-table input.pick[value='coffee#0']").click()
    _css(driver, "#delete-documents").click()
    _wait(driver, "#documents-message", "Deleted 1")
    _wait(driver, "#documents p.muted", "of 3")
    assert _css(driver, "#kb-count").text == "3"
    assert httpx.get(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{_kb_id(driver)}/count",
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json() == {"count": 3}
    _shot(driver, "documents")

    # evaluation on uploaded queries and qrels
    _css(driver, "#tab-evaluate").click()
    _wait(driver, "#eval-queries").send_keys(str(files["queries"]))
    _css(driver, "#eval-qrels").send_keys(str(files["qrels"]))
    _css(driver, "#evaluate button[type=submit]").click()
    _wait(driver, "#eval-message", "2 judged queries of 2", seconds=300)  # ranx compiles its numba kernels once
    metrics = _css(driver, "#metrics")
    assert metrics.text.lower().splitlines()[0].split() == ["search", "type", "ndcg@10", "recall@100", "mrr@10",
                                                            "queries/s"]
    lines = {line.split(" ")[0]: line.split(" ")[1:] for line in metrics.text.splitlines()[1:]}
    assert set(lines) == {"similarity", "keyword", "hybrid"}
    assert float(lines["similarity"][1]) == 0.5  # recall@100: q1's bee is found, q2's coffee was deleted
    _shot(driver, "evaluate")

    _css(driver, "#tab-overview").click()
    _wait(driver, "#schema")
    _shot(driver, "knowledge-bank")
    driver.get(server.url + "/#/p/DEFAULT")
    _wait(driver, "#kb-table", "guides")
    _shot(driver, "project")

    # delete the knowledge bank and the folder from the project page (each asks first)
    kb_id = _css(driver, "#kb-table button[data-delete-kb]").get_attribute("data-delete-kb")
    _css(driver, f"#kb-table button[data-delete-kb='{kb_id}']").click()
    driver.switch_to.alert.accept()
    _wait(driver, "#main", "No knowledge banks yet.")
    _css(driver, "#folder-table button[data-delete-folder]").click()
    driver.switch_to.alert.accept()
    _wait(driver, "#main", "No managed folders yet.")
    listed = httpx.get(f"{server.url}/v1/projects/DEFAULT/knowledge-banks",
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.json() == []


def test_auth_off_needs_no_sign_in(tmp_path: Path, browser) -> None:  # noqa: ANN001
    open_server = KBServer(tmp_path / "open", auth=False).start()
    try:
        browser.get(open_server.url + "/")
        _wait(browser, "#projects", "DEFAULT")
        assert _css(browser, "#who").text == "authentication off"
        assert not browser.find_elements("css selector", "#signin")
    finally:
        open_server.stop()


def _kb_id(driver) -> str:  # noqa: ANN001
    return driver.execute_script("return decodeURIComponent(location.hash.split('/')[4])")


def _pdf_with_a_blank_page(path: Path) -> bytes:
    """A page of text and a page with nothing on it: indexed, with a warning that page 2 is left out."""
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path))
    pdf.drawString(72, 720, "Descale the kettle once a month with white vinegar.")
    pdf.showPage()
    pdf.showPage()
    pdf.save()
    return path.read_bytes()


def test_folder_sync_from_the_console(server: KBServer, browser, tmp_path: Path) -> None:  # noqa: ANN001
    """Documents uploaded into a folder are synced into a knowledge bank from the folder's page: the job's
    progress, then its report (failed, empty and warned files listed apart); a second sync finds everything
    unchanged."""
    driver = browser
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    base = f"{server.url}/v1/projects/DEFAULT"
    folder = httpx.post(f"{base}/folders", json={"name": "manuals"}, headers=auth).json()
    pages = {
        "guide.md": b"# Device guide\n\n## Reset\n\nHold the power button for ten seconds to reset the device.\n",
        "notes.html": b"<html><body><nav>Home | About</nav><h1>Care</h1><p>Wipe the screen with a dry cloth.</p>"
                      b"<footer>Copyright</footer></body></html>",
        "broken.pdf": b"%PDF-1.7 this is not really a PDF",
        "moved.html": b'<html><head><meta http-equiv="refresh" content="0; url=guide.md"></head></html>',
        "kettle.pdf": _pdf_with_a_blank_page(tmp_path / "kettle.pdf"),
    }
    for path, content in pages.items():
        assert httpx.put(f"{base}/folders/{folder['id']}/files/{path}", content=content,
                         headers=auth).status_code == 201
    kb_id = httpx.post(f"{base}/knowledge-banks", json={"name": "manuals-kb"}, headers=auth).json()["id"]
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")  # the browser is shared with the other tests
    _sign_in(driver, server, ADMIN_KEY)
    driver.get(f"{server.url}/#/p/DEFAULT/folder/{folder['id']}")
    _wait(driver, "#sync")
    _select(_css(driver, "#sync-kb"), kb_id)
    _select(_css(driver, "#sync-extraction"), "structured")
    _css(driver, "#sync button[type=submit]").click()
    report = _wait(driver, "#sync-report", seconds=WAIT * 2)
    rows = dict(line.split(" ", 1) for line in report.text.splitlines() if " " in line)
    assert rows["added"] == "3" and rows["failed"] == "1" and rows["removed"] == "0", report.text
    assert rows["empty"] == "1", report.text  # nothing to index is not a failure, and is listed apart
    assert "broken.pdf" in _css(driver, "#sync-failed").text
    assert "moved.html" in _css(driver, "#sync-empty").text and "redirect" in _css(driver, "#sync-empty").text
    warned = _css(driver, "#sync-warnings").text  # indexed, with what the reader should know
    assert "kettle.pdf" in warned and "pages 2 have no text layer" in warned, warned
    hits = httpx.post(f"{base}/knowledge-banks/{kb_id}/search", headers=auth,
                      json={"query": "how do I reset the device", "k": 1, "search_type": "keyword"}).json()
    assert "power button" in hits["results"][0]["text"]
    _shot(driver, "folder-sync")
    _css(driver, "#sync button[type=submit]").click()  # nothing changed: nothing extracted again
    report = _wait(driver, "#sync-report", seconds=WAIT)
    rows = dict(line.split(" ", 1) for line in report.text.splitlines() if " " in line)
    assert rows["unchanged"] == "4" and rows["added"] == "0" and rows["texts_embedded"] == "0", report.text


def test_a_folder_sync_is_cancelled_from_the_console(server: KBServer, browser) -> None:  # noqa: ANN001
    """The sync's Cancel button stops it at its next commit; the page says what stays."""
    driver = browser
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    base = f"{server.url}/v1/projects/DEFAULT"
    folder = httpx.post(f"{base}/folders", json={"name": "many-notes"}, headers=auth).json()
    for n in range(120):
        text = f"# Note {n}\n\n" + " ".join(f"line {s} of note {n} on subject {n % 9}." for s in range(80))
        assert httpx.put(f"{base}/folders/{folder['id']}/files/n{n:03d}.md", content=text.encode(),
                         headers=auth).status_code == 201
    kb_id = httpx.post(f"{base}/knowledge-banks", json={"name": "cancelled-kb"}, headers=auth).json()["id"]
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")
    _sign_in(driver, server, ADMIN_KEY)
    driver.get(f"{server.url}/#/p/DEFAULT/folder/{folder['id']}")
    _wait(driver, "#sync")
    _select(_css(driver, "#sync-kb"), kb_id)
    _css(driver, "#sync button[type=submit]").click()
    _wait(driver, "#sync-cancel").click()
    message = _wait(driver, "#sync-message", "cancelled", seconds=WAIT * 2)
    assert "next sync does the rest" in message.text
    gone = driver.execute_script(
        "return [!!document.querySelector('#sync-cancel'), !!document.querySelector('#sync-report')]")
    assert gone == [False, False]
    jobs = httpx.get(f"{base}/knowledge-banks/{kb_id}/sync-jobs", headers=auth).json()
    assert [job["state"] for job in jobs] == ["cancelled"] and jobs[0]["progress"]["files_processed"] < 120


def test_reader_sees_403_messages(server: KBServer, browser) -> None:  # noqa: ANN001
    driver = browser
    reader = server.keys().create("reader", roles={"DEFAULT": "reader"})
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")
    _sign_in(driver, server, reader)
    assert "DEFAULT: reader" in _css(driver, "#who").text
    driver.get(server.url + "/#/p/DEFAULT")
    _wait(driver, "#create-kb")
    _css(driver, "#create-kb input[name=name]").send_keys("not-allowed")
    _css(driver, "#create-kb button").click()
    message = _wait(driver, "#kb-message", "403")
    assert "Not allowed (403)" in message.text and "admin role" in message.text
    assert "forbidden" in message.get_attribute("class")
    _css(driver, "#create-folder input[name=name]").send_keys("nope")
    _css(driver, "#create-folder button").click()
    assert "writer role" in _wait(driver, "#folder-message", "403").text
    _shot(driver, "forbidden")
    listed = httpx.get(f"{server.url}/v1/projects/DEFAULT/knowledge-banks",
                       headers={"Authorization": f"Bearer {reader}"}).json()
    assert "not-allowed" not in {k["name"] for k in listed}
