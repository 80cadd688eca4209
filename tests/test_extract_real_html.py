"""HTML extraction on real documentation sites nobody on the team wrote: Sphinx (Python), DocBook (PostgreSQL)
and mdBook (two Rust books), read in place (tests/support/real_corpora.py).

For a sample of each site, checked against the page's own markup (its main-content container, found here
independently of the extractor): every page with visible text extracts; the sections follow the page's
headings; the site's navigation, sidebar and footer text is not in the chunks; code blocks survive with their
line breaks and indentation.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import lxml.html
import pytest

from kb_base.folders import ManagedFolderDocumentRef
from tests.support.real_corpora import Family, families, html_files, sample
from writers.document_chunks import chunk_records
from writers.extract import extract_document

SAMPLE = 16  # pages per site: every corner of the sorted file list, a few seconds per site
HEADINGS = ".//h1|.//h2|.//h3|.//h4|.//h5|.//h6"
HEADING_SHARE = 0.97  # a DocBook admonition's title ("Note") is not always a section: the only misses seen


@pytest.fixture(scope="module", params=["sphinx", "docbook", "mdbook", "mdbook-rbe"])
def site(request: pytest.FixtureRequest) -> tuple[Family, list[tuple[Path, bytes, object]]]:
    family = families()[request.param]
    pages = []
    for path in sample(html_files(family), SAMPLE):
        data = path.read_bytes()
        pages.append((path, data, extract_document(str(path), data, "structured")))
    return family, pages


def _flat(text: str) -> str:
    return " ".join(text.replace("\u00b6", "").split()).strip("# ")


def _code(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\t", "    ").splitlines() if line.strip())


def _content(family: Family, data: bytes) -> lxml.html.HtmlElement | None:
    page = lxml.html.document_fromstring(data)
    found = page.xpath(family.content_xpath)
    if not found:
        return None  # a redirect stub ("this page has moved") has no content container
    content = found[0]
    for chrome in content.xpath(".//div[@class='navheader' or @class='navfooter']"):  # DocBook's, inside <body>
        chrome.drop_tree()
    return content


def _headings_with_text(content: lxml.html.HtmlElement) -> list[str]:
    """The titles of the headings followed by text of their own that is not in links (20 letters at least): a
    "See also" list of links is boilerplate an extractor rightly drops, its heading with it."""
    marked = copy.deepcopy(content)
    headings = marked.xpath(HEADINGS)
    titles = [_flat(h.text_content()) for h in headings]
    for index, heading in enumerate(headings):
        for child in list(heading):
            heading.remove(child)
        heading.text = f"@@heading{index}@@"
    for link in marked.xpath(".//a"):
        if link.getparent() is not None:
            link.drop_tree()
    parts = re.split(r"@@heading(\d+)@@", marked.text_content())
    own = {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}
    return [t for i, t in enumerate(titles) if t and len(re.sub(r"[\W_\d]+", "", own.get(i, ""))) >= 20]


def test_every_page_with_visible_text_extracts(site) -> None:  # noqa: ANN001
    family, pages = site
    assert len(pages) == SAMPLE
    for path, data, document in pages:
        visible = _flat(lxml.html.document_fromstring(data).text_content())
        assert visible and document.text_length > 0, path
        assert document.text_length >= 0.02 * len(visible) or document.text_length > 200, path


def test_sections_follow_the_page_headings(site) -> None:  # noqa: ANN001
    family, pages = site
    expected = found = 0
    missed = []
    for path, data, document in pages:
        content = _content(family, data)
        if content is None:
            continue
        titles = _headings_with_text(content)
        paths = [p for s in document.sections for p in s.path]
        for title in titles:
            expected += 1
            if title in paths:
                found += 1
            else:
                missed.append((path.name, title))
        leaves = [s.path[-1] for s in document.sections if s.path]
        in_page = [t for t in titles if t in leaves and titles.count(t) == 1]  # mdBook's print page repeats some
        assert in_page == sorted(in_page, key=leaves.index), f"{path}: sections out of the page's order"
    assert expected > SAMPLE, f"too few headings checked in {family.name}: {expected}"
    assert found >= HEADING_SHARE * expected, f"{family.name}: {found}/{expected} headings are sections; {missed}"


def test_site_chrome_is_not_in_the_chunks(site) -> None:  # noqa: ANN001
    family, pages = site
    seen_in_pages = dict.fromkeys(family.chrome, 0)
    for path, data, document in pages:
        raw = data.decode("utf-8", "replace")
        ref = ManagedFolderDocumentRef("/" + path.name, "real")
        chunks = "\n".join(r.text for r in chunk_records(document, ref, "", 1000, 200))
        for chrome in family.chrome:
            seen_in_pages[chrome] += chrome in raw
            assert not re.search(rf"(?<!\w){re.escape(chrome)}(?!\w)", chunks), (path, chrome)
    # the strings are this site's chrome indeed: most sampled pages carry them
    assert all(count >= SAMPLE // 2 for count in seen_in_pages.values()), seen_in_pages


def test_code_blocks_survive_whole(site) -> None:  # noqa: ANN001
    family, pages = site
    blocks = 0
    for path, data, document in pages:
        content = _content(family, data)
        if content is None:
            continue
        text = _code("".join(s.text for s in document.sections))
        for pre in content.xpath(".//pre"):
            code = _code(pre.text_content())
            if code:
                blocks += 1
                assert code in text, f"{path}: code block lost or reflowed:\n{code[:300]}"
    assert blocks >= 5, f"too few code blocks in the {family.name} sample: {blocks}"
