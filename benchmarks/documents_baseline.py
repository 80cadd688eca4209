"""The HTML extractor kb had before issue 36 (BeautifulSoup, class-name noise rules), kept only so that
``python -m benchmarks.documents --real`` can measure today's extractor beside it on the same files. Not used by kb.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, Tag

from writers.extract.types import ExtractedDocument, SectionBuilder

NOISE_TAGS = ["script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "iframe",
              "svg", "button", "select"]
NOISE_ROLES = {"navigation", "banner", "contentinfo", "search", "menu", "menubar"}
NOISE_NAMES = re.compile(r"(^|[-_\s])(nav|navbar|menu|breadcrumbs?|sidebar|cookie|cookies|skip-link|footer)"
                         r"($|[-_\s])", re.IGNORECASE)
HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_MARK = "\x00"  # cannot occur in parsed HTML text: lxml drops NUL characters


def _is_noise(tag: Tag) -> bool:
    if tag.attrs is None:
        return False
    if (tag.get("role") or "") in NOISE_ROLES or tag.get("aria-hidden") == "true" or tag.has_attr("hidden"):
        return True
    names = " ".join([str(tag.get("id") or ""), *(tag.get("class") or [])])
    return bool(names.strip()) and NOISE_NAMES.search(names) is not None


def clean_root(data: bytes) -> Tag:
    soup = BeautifulSoup(data, "lxml")
    for tag in soup(NOISE_TAGS):
        tag.decompose()
    for tag in [t for t in soup.find_all(True) if _is_noise(t)]:
        if not tag.decomposed:
            tag.decompose()
    articles = soup.find_all("article")
    return soup.find("main") or (articles[0] if len(articles) == 1 else None) or soup.body or soup


def _lines(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line) + "\n"


def extract_html(data: bytes, mode: str) -> ExtractedDocument:
    root = clean_root(data)
    builder = SectionBuilder()
    if mode == "structured":
        for heading in root.find_all(HEADINGS):
            title = " ".join(heading.get_text(" ").split())
            heading.replace_with(f"\n{_MARK}{heading.name[1]}{title}\n")
    text = root.get_text("\n")
    if mode == "raw":
        builder.add(_lines(text))
        return ExtractedDocument("html", builder.finish())
    for line in text.split("\n"):
        if line.startswith(_MARK):
            builder.heading(int(line[1]), line[2:])
            builder.add(line[2:] + "\n")
        elif line.strip():
            builder.add(" ".join(line.split()) + "\n")
    return ExtractedDocument("html", builder.finish())
