"""HTML: the page's main content through trafilatura, h1-h6 as sections in structured mode.

1. The page is parsed (its own charset) and what never holds text is dropped:
   scripts, styles, templates, SVG.
2. The main content is the page's ``<main>`` (or ``role="main"``, or a single
   ``<article>``) when it holds at least a quarter of the body's text, else
   the body. Inside it, navigation regions (``<nav>``,
   ``role="navigation"``/``search``/``banner``/``contentinfo``, hidden
   elements; ``<aside>`` too unless the page marked its main content, where
   an aside is the article's own) and a page-level ``<header>``/``<footer>`` without an ``<h1>``
   are dropped, but only when they hold less than half of its text: a rule
   that matches the page's main text never removes it (real sites put
   ``sidebar`` or ``nav`` on the outermost elements). No rule reads class
   names: that is trafilatura's job, with its own over-pruning guard.
3. trafilatura (Apache-2.0) removes the remaining boilerplate (link lists,
   share buttons, cookie banners) from that content, handed to it as an
   ``<article>`` so that it keeps headings and code blocks (without a
   container it falls back to a path that drops headings).
   Code blocks go through it as one-word tokens and come back whole
   (trafilatura collapses the whitespace of code inside list items).
4. Its result is read into blocks (``writers.extract.html_blocks``): headings,
   paragraphs, code with its line breaks, lists, tables one row per line.
   When trafilatura keeps nothing of a page that has visible text, or falls
   back to its baseline (one run of text, the page's headings lost: index
   pages, tables of contents), the cleaned content itself is read the same
   way: a page is never lost to the extractor's judgement.

A page with no visible text is ``EmptyDocumentError`` with the reason (a
redirect, a shell filled by JavaScript, nothing but markup).
"""

from __future__ import annotations

import logging
import re

import lxml.html
from lxml import etree
from trafilatura import bare_extraction
from trafilatura.utils import load_html

from kb_base.errors import EmptyDocumentError, ExtractionError
from writers.extract.html_blocks import HTML_HEADINGS, Block, iter_blocks
from writers.extract.html_code import hide_code, restore_code
from writers.extract.types import ExtractedDocument, SectionBuilder

log = logging.getLogger(__name__)

NEVER_TEXT = ("script", "style", "noscript", "template", "svg", "iframe", "object", "embed", "canvas")
CHROME_TAGS = ("nav", "aside")
CHROME_ROLES = {"navigation", "search", "banner", "contentinfo", "menu", "menubar", "complementary"}
PAGE_CHROME_TAGS = ("header", "footer")
MAIN_SHARE = 0.25  # a <main> holding less of the body's text than this is a misused tag, not the content
CHROME_SHARE = 0.5  # a "chrome" element holding at least this much of the content's text is the content
_REFRESH = re.compile(r"url\s*=\s*['\"]?([^'\";]+)", re.IGNORECASE)


def _text_length(element: etree._Element) -> int:
    return sum(len(piece.strip()) for piece in element.itertext())


def parse_page(data: bytes) -> etree._Element:
    """The page as an lxml tree, decoded in its own charset (BOM, <meta charset>, then detection)."""
    tree = load_html(data)
    if tree is None:  # trafilatura refuses fragments it finds dubious; lxml reads anything
        try:
            tree = lxml.html.document_fromstring(data)
        except (etree.ParserError, ValueError) as exc:
            raise ExtractionError(f"not a readable HTML page: {exc}") from exc
    etree.strip_elements(tree, *NEVER_TEXT, etree.Comment, etree.ProcessingInstruction, with_tail=False)
    return tree


def _is_chrome(element: etree._Element, in_main: bool) -> bool:
    """Navigation or hidden. Inside a page's marked main content an <aside> is the article's own (Sphinx
    writes its sidebar directive and footnotes as <aside>): kept."""
    role = (element.get("role") or "").lower()
    if in_main and (element.tag == "aside" or role == "complementary"):
        return False
    return (element.tag in CHROME_TAGS or role in CHROME_ROLES or element.get("aria-hidden") == "true"
            or element.get("hidden") is not None)


def main_content(tree: etree._Element) -> etree._Element:
    """The element holding the page's main text, with navigation regions that do not hold it removed."""
    body = tree.find("body") if tree.tag == "html" else None
    body = body if body is not None else tree
    body_length = _text_length(body) or 1
    candidates = tree.xpath("//main | //*[@role='main']")
    articles = tree.xpath("//article")
    if not candidates and len(articles) == 1:
        candidates = articles
    best = max(candidates, key=_text_length, default=None)
    root = best if best is not None and _text_length(best) >= MAIN_SHARE * body_length else body
    root_length = _text_length(root) or 1
    doomed = []
    for element in root.iter():
        if not isinstance(element.tag, str) or element is root:
            continue
        chrome = _is_chrome(element, root is not body) or (element.tag in PAGE_CHROME_TAGS and root is body
                                         and element.getparent() is body and not element.xpath(".//h1"))
        if chrome and _text_length(element) < CHROME_SHARE * root_length:
            doomed.append(element)
    for element in doomed:
        if element.getparent() is not None:  # already gone with an ancestor
            _drop(element)
    return root


def _drop(element: etree._Element) -> None:
    """Remove ``element`` and keep its tail text (which belongs to its parent)."""
    parent = element.getparent()
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _as_article(root: etree._Element, title: str | None) -> etree._Element:
    """A page whose body is one <article> holding ``root``'s content (moved, not copied)."""
    page = lxml.html.Element("html")
    head = etree.SubElement(page, "head")
    if title:
        etree.SubElement(head, "title").text = title
    article = etree.SubElement(etree.SubElement(page, "body"), "article")
    article.text = root.text
    for child in list(root):
        article.append(child)
    return page


def trafilatura_blocks(page: etree._Element) -> list[Block]:
    # fast: no second-opinion extractors (readability, jusText), twice the speed; favor_recall: keep
    # borderline paragraphs (a documentation page has few "boilerplate-looking" parts that are not chrome)
    try:
        document = bare_extraction(page, fast=True, favor_recall=True, include_comments=False, include_tables=True,
                                   include_formatting=False, include_links=False, include_images=False,
                                   deduplicate=False, with_metadata=False)
    except Exception:  # noqa: BLE001 - a bug of the library on one odd page: the whole content instead
        log.warning("trafilatura failed on a page; its whole content is used", exc_info=True)
        return []
    body = getattr(document, "body", None)
    return list(iter_blocks(body)) if body is not None else []


def _why_empty(data: bytes) -> str:
    tree = lxml.html.document_fromstring(data) if data.strip() else None
    if tree is not None:
        for meta in tree.xpath("//meta[@http-equiv]"):
            if (meta.get("http-equiv") or "").lower() == "refresh":
                target = _REFRESH.search(meta.get("content") or "")
                return f"a redirect page (to {target.group(1).strip()}) with no text of its own" if target \
                    else "a refreshing page with no text of its own"
        if tree.xpath("//script"):
            return "no visible text: an empty page shell (its content is built by JavaScript)"
    return "no visible text in this HTML page"


def extract_html(data: bytes, mode: str) -> ExtractedDocument:
    tree = parse_page(data)
    titles = tree.xpath("//title")
    title = " ".join(titles[0].text_content().split()) if titles else None
    root = main_content(tree)
    if _text_length(root) == 0:
        raise EmptyDocumentError(_why_empty(data))
    has_headings = any(h.text_content().strip() for h in root.iter(*HTML_HEADINGS))
    for figure in root.iter("figure", "figcaption"):
        # trafilatura drops figures with the images it leaves out; documentation puts code listings in them
        figure.tag = "div" if figure.tag == "figure" else "p"
    originals = hide_code(root)
    blocks = restore_code(trafilatura_blocks(_as_article(root, title)), originals)
    if not any(b.kind != "heading" for b in blocks) or (has_headings and all(b.kind != "heading" for b in blocks)):
        # trafilatura kept nothing, or fell back to its baseline (one run of text, headings lost: an index
        # page, a table of contents): the cleaned content, whole, read the same way
        root = main_content(parse_page(data))
        blocks = list(iter_blocks(root))
    builder = SectionBuilder()
    for block in blocks:
        if block.kind == "heading" and mode == "structured":
            builder.heading(block.level, block.text)
        builder.add(block.text + "\n\n")
    return ExtractedDocument("html", builder.finish(), title=title or None)
