"""The console's project creation and knowledge bank settings form, in a real headless Chromium against a real
`kb serve` (auth on; the deterministic fake embedding model, since these pages never need the real one).

As a person would: create a project and see it listed (and a bad key refused with the server's words); edit a
knowledge bank's schema, default search type and k, fusion and images folder, reload and see them kept and in
force (a search that uses the new default); see a setting the server refuses explained under the form with
nothing changed; and with a reader's or a writer's key see both controls disabled, the server answering 403 if
the console asks anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.browser import chromium
from tests.support.server import ADMIN_KEY, KBServer
from tests.test_console import _css, _select, _shot, _sign_in, _wait

pytestmark = pytest.mark.timeout(600)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BASE = "/v1/projects/DEFAULT"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    server = KBServer(tmp_path_factory.mktemp("console-settings")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as driver:
        driver.set_script_timeout(30)
        yield driver


@pytest.fixture(scope="module")
def kb(server: KBServer) -> dict[str, str]:
    """A knowledge bank of six documents (schema ``n: int``) and a managed folder for its images."""
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as http:
        created = http.post(f"{BASE}/knowledge-banks", json={
            "name": "tunable", "embedding_llm_id": "custom:fake6", "settings": {"metadata_schema": {"n": "int"}}})
        assert created.status_code == 201, created.text
        url = f"{BASE}/knowledge-banks/{created.json()['id']}"
        docs = [{"id": f"d{n}", "text": f"solar panel {n} " + "filler " * n, "metadata": {"n": n}} for n in range(6)]
        assert http.post(f"{url}/documents", json={"documents": docs}).status_code == 200
        folder = http.post(f"{BASE}/folders", json={"name": "pictures"}).json()
    return {"id": created.json()["id"], "url": url, "folder": f"DEFAULT.{folder['id']}"}


def _fresh_sign_in(driver, server: KBServer, key: str) -> None:  # noqa: ANN001
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")  # the browser is shared by the tests of this module
    _sign_in(driver, server, key)


def _settings(server: KBServer, kb: dict[str, str]) -> dict:
    return httpx.get(f"{server.url}{kb['url']}/settings", headers=ADMIN).json()


def _set_text(element, text: str) -> None:  # noqa: ANN001
    element.clear()
    element.send_keys(text)


def test_create_a_project(server: KBServer, browser) -> None:  # noqa: ANN001
    driver = browser
    _fresh_sign_in(driver, server, ADMIN_KEY)
    assert _css(driver, "#create-project button").is_enabled()
    assert not driver.find_elements("css selector", "#create-project-note")

    # the server's refusal, where the form is
    _css(driver, "#project-key").send_keys("bad key!")
    _css(driver, "#create-project button").click()
    message = _wait(driver, "#project-message", "422")
    assert "invalid project key 'bad key!'" in message.text and "letters, digits or underscores" in message.text

    _set_text(_css(driver, "#project-key"), "RESEARCH")
    _css(driver, "#project-name").send_keys("Research papers")
    _css(driver, "#create-project button").click()
    _wait(driver, "#project-message", "Created project RESEARCH (Research papers).")
    assert "RESEARCH Research papers admin" in _css(driver, "#projects").text  # listed, with the key's role
    listed = httpx.get(f"{server.url}/v1/projects", headers=ADMIN).json()
    assert {"key": "RESEARCH", "name": "Research papers"} in listed
    _shot(driver, "projects")

    # again: 409, said under the form, and the list is unchanged
    _css(driver, "#project-key").send_keys("RESEARCH")
    _css(driver, "#create-project button").click()
    assert "already exists" in _wait(driver, "#project-message", "409").text
    assert _css(driver, "#projects").text.count("RESEARCH") == 1

    # the new project opens, empty
    _css(driver, "#projects a[href='#/p/RESEARCH']").click()
    _wait(driver, "#main", "No knowledge banks yet.")


def test_edit_settings_reload_and_search(server: KBServer, browser, kb: dict[str, str]) -> None:  # noqa: ANN001
    driver = browser
    _fresh_sign_in(driver, server, ADMIN_KEY)
    page = f"{server.url}/#/p/DEFAULT/kb/{kb['id']}"
    driver.get(page + "/overview")
    _wait(driver, "#kb-settings")
    # the current values, in the form
    keys = driver.find_elements("css selector", "#schema-editor .schema-key")
    assert [k.get_attribute("value") for k in keys] == ["n"]
    assert _css(driver, "#schema-editor .schema-type").get_attribute("value") == "int"
    assert _css(driver, "#default-search-type").get_attribute("value") == ""
    assert _css(driver, "#default-k").get_attribute("value") == ""

    # a column, search defaults, fusion and the images folder
    _css(driver, "#add-column").click()
    new_row = driver.find_elements("css selector", "#schema-editor tr")[-1]
    new_row.find_element("css selector", ".schema-key").send_keys("topic")
    _select(new_row.find_element("css selector", ".schema-type"), "string")
    _select(_css(driver, "#default-search-type"), "keyword")
    _css(driver, "#default-k").send_keys("2")
    _css(driver, "#settings-fusion").send_keys('{"method": "rrf", "rank_constant": 10}')
    _select(_css(driver, "#images-folder"), kb["folder"])
    _css(driver, "#save-settings").click()
    _wait(driver, "#settings-message", "Settings saved.")

    stored = _settings(server, kb)
    assert stored["metadata_schema"] == {"n": "int", "topic": "string"}
    assert stored["search"] == {"default_search_type": "keyword", "default_k": 2,
                                "fusion": {"method": "rrf", "rank_constant": 10}}
    assert stored["images_folder"] == kb["folder"] and stored["embedding_llm_id"] == "custom:fake6"

    # a reload shows them kept
    driver.refresh()
    _wait(driver, "#settings-summary", "keyword")
    summary = _css(driver, "#settings-summary").text
    assert "Default k 2" in summary and '"rank_constant":10' in summary and kb["folder"] in summary
    assert "topic" in _css(driver, "#schema").text
    assert _css(driver, "#default-search-type").get_attribute("value") == "keyword"
    assert _css(driver, "#default-k").get_attribute("value") == "2"
    assert json.loads(_css(driver, "#settings-fusion").get_attribute("value")) == {"method": "rrf",
                                                                                 "rank_constant": 10}
    assert _css(driver, "#images-folder").get_attribute("value") == kb["folder"]
    _shot(driver, "settings")

    # and in force: the search tab starts from the defaults, and a search gets keyword results, two of them
    _css(driver, "#tab-search").click()
    _wait(driver, "#query").send_keys("solar panel")
    assert _css(driver, "#search-type").get_attribute("value") == "keyword"
    assert _css(driver, "#k").get_attribute("value") == "2"
    _css(driver, "#search button[type=submit]").click()
    _wait(driver, "#search-message", "2 results")
    stages = [table.text.lower() for table in driver.find_elements("css selector", "#results table.scores")]
    assert len(stages) == 2 and all("keyword" in s and "dense" not in s for s in stages), stages
    # so does a REST search that names neither, while the new schema key filters
    rest = httpx.post(f"{server.url}{kb['url']}/search", headers=ADMIN, json={"query": "solar panel"}).json()
    assert len(rest["results"]) == 2 and set(rest["results"][0]["scores"]) == {"keyword"}
    assert httpx.post(f"{server.url}{kb['url']}/search", headers=ADMIN,
                      json={"query": "solar", "filter": {"topic": "x"}}).json() == {"results": []}


def test_refused_settings_are_explained(server: KBServer, browser, kb: dict[str, str]) -> None:  # noqa: ANN001
    driver = browser
    _fresh_sign_in(driver, server, ADMIN_KEY)
    driver.get(f"{server.url}/#/p/DEFAULT/kb/{kb['id']}/overview")
    _wait(driver, "#kb-settings")
    before = _settings(server, kb)

    # the server's word for a fusion method it does not know, under the form; nothing saved
    fusion = _css(driver, "#settings-fusion")
    _set_text(fusion, '{"method": "magic"}')
    _css(driver, "#save-settings").click()
    message = _wait(driver, "#settings-message", "magic")
    assert "422 invalid_input" in message.text and "error" in message.get_attribute("class")
    # a default the knowledge bank cannot run: semantic_hybrid without a reranker
    _set_text(fusion, "")
    _select(_css(driver, "#default-search-type"), "semantic_hybrid")
    _css(driver, "#save-settings").click()
    assert "needs a search.reranker" in _wait(driver, "#settings-message", "reranker").text
    # a reranker the server cannot use
    _css(driver, "#settings-reranker").send_keys('{"type": "cross-encoder", "path": "/no/such/model"}')
    _css(driver, "#save-settings").click()
    assert "/no/such/model" in _wait(driver, "#settings-message", "/no/such/model").text
    assert _settings(server, kb) == before

    # caught before asking the server: JSON that does not parse, a column without a key
    _set_text(_css(driver, "#settings-reranker"), '{"type": ')
    _css(driver, "#save-settings").click()
    assert "reranker is not valid JSON" in _wait(driver, "#settings-message", "not valid JSON").text
    assert "invalid" in _css(driver, "#settings-reranker").get_attribute("class")
    _set_text(_css(driver, "#settings-reranker"), "")
    _css(driver, "#add-column").click()
    _css(driver, "#save-settings").click()
    _wait(driver, "#settings-message", "needs a key")
    assert _settings(server, kb) == before

    # the page still shows what is stored after a reload
    driver.refresh()
    _wait(driver, "#kb-settings")
    assert _css(driver, "#default-search-type").get_attribute("value") == (before["search"].get(
        "default_search_type") or "")


@pytest.mark.parametrize("role", ["reader", "writer"])
def test_controls_disabled_without_the_role(server: KBServer, browser, kb: dict[str, str], role: str) -> None:  # noqa: ANN001
    driver = browser
    key = server.keys().create(role, roles={"DEFAULT": role})
    _fresh_sign_in(driver, server, key)
    assert not _css(driver, "#create-project button").is_enabled()
    assert not _css(driver, "#project-key").is_enabled()
    assert "global admin" in _css(driver, "#create-project-note").text

    driver.get(f"{server.url}/#/p/DEFAULT/kb/{kb['id']}/overview")
    _wait(driver, "#kb-settings")
    assert not _css(driver, "#save-settings").is_enabled()
    assert not _css(driver, "#default-search-type").is_enabled() and not _css(driver, "#add-column").is_enabled()
    assert f"yours is {role}" in _css(driver, "#settings-note").text
    if role == "reader":
        _shot(driver, "settings-reader")

    # the server refuses if the console asks anyway (with this tab's key)
    before = _settings(server, kb)
    answers = driver.execute_async_script("""
        const [url, done] = arguments;
        const tried = async (call) => {
            try { await call(); return "done"; } catch (err) { return err.status + " " + err.message; }
        };
        Promise.all([tried(() => api.post("/v1/projects", {key: "SNEAKY"})),
                     tried(() => api.patch(url + "/settings", {search: {default_k: 9}}))]).then(done);
    """, kb["url"])
    assert answers[0].startswith("403") and "global admin" in answers[0], answers
    assert answers[1].startswith("403") and "admin role" in answers[1], answers
    assert _settings(server, kb) == before
    assert "SNEAKY" not in {p["key"] for p in httpx.get(f"{server.url}/v1/projects", headers=ADMIN).json()}
