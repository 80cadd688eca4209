"""HTML: the page's main content, h1-h6 as sections in structured mode.

1. The page is parsed in its own charset and its main content found
   (``writers.extract.html_page``): the page's ``<main>``/``role="main"``/single
   ``<article>``, or a known documentation generator's layout, else the body;
   navigation regions that do not hold the main text are dropped.
2. Where the page marks its content itself, that content is read as it is:
   the author has already said where the text is, and trafilatura, whose
   boilerplate rules cost five to ten times the rest of the reading, would
   only second-guess it (on the Sphinx, DocBook and mdBook sets it removed
   nothing but headings' anchor marks, measured). Elsewhere trafilatura
   (Apache-2.0) removes the remaining boilerplate (link lists, share buttons,
   cookie banners), handed the content as an ``<article>`` so that it keeps
   headings and code blocks (without a container it falls back to a path that
   drops headings). Code blocks go through it as one-word tokens and come back
   whole (trafilatura collapses the whitespace of code inside list items).
3. The content is read into blocks (``writers.extract.html_blocks``):
   headings, paragraphs, code with its line breaks, lists, tables one row per
   line. When trafilatura keeps nothing of a page that has visible text, or
   falls back to its baseline (one run of text, the page's headings lost:
   index pages, tables of contents), the cleaned content itself is read the
   same way: a page is never lost to the extractor's judgement.

A page with no visible text is ``EmptyDocumentError`` with the reason (a
redirect, a shell filled by JavaScript, nothing but markup).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import lxml.html
from lxml import etree

from kb_base.errors import EmptyDocumentError
from writers.extract.html_blocks import HTML_HEADINGS, Block, iter_blocks
from writers.extract.html_code import hide_code, restore_code
from writers.extract.html_page import main_content, parse_page, text_length, text_of
from writers.extract.types import ExtractedDocument, SectionBuilder

log = logging.getLogger(__name__)

_REFRESH = re.compile(r"url\s*=\s*['\"]?([^'\";]+)", re.IGNORECASE)


def bare_extraction(*args: Any, **kwargs: Any) -> Any:
    """trafilatura's, imported on first use: half a second of imports that pages marking their content, and
    every other kind of document, never need."""
    from trafilatura import bare_extraction as extraction

    return extraction(*args, **kwargs)


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
    title = " ".join(text_of(titles[0]).split()) if titles else None
    content = main_content(tree)
    root = content.root
    if text_length(root) == 0:
        raise EmptyDocumentError(_why_empty(data))
    if content.marked:
        blocks = list(iter_blocks(root))
    else:
        blocks = _through_trafilatura(root, title)
        if blocks is None:
            # trafilatura kept nothing, or fell back to its baseline (one run of text, headings lost: an index
            # page, a table of contents): the cleaned content, whole, read the same way
            blocks = list(iter_blocks(main_content(parse_page(data)).root))
    builder = SectionBuilder()
    for block in blocks:
        if block.kind == "heading" and mode == "structured":
            builder.heading(block.level, block.text)
        builder.add(block.text + "\n\n")
    return ExtractedDocument("html", builder.finish(), title=title or None)


def _through_trafilatura(root: etree._Element, title: str | None) -> list[Block] | None:
    """The blocks trafilatura keeps of ``root`` (moved into its input: ``root`` is left empty); None when it
    kept nothing or lost the page's headings."""
    has_headings = any(text_length(h) for h in root.iter(*HTML_HEADINGS))
    for figure in root.iter("figure", "figcaption"):
        # trafilatura drops figures with the images it leaves out; documentation puts code listings in them
        figure.tag = "div" if figure.tag == "figure" else "p"
    originals = hide_code(root)
    blocks = restore_code(trafilatura_blocks(_as_article(root, title)), originals)
    if not any(b.kind != "heading" for b in blocks) or (has_headings and all(b.kind != "heading" for b in blocks)):
        return None
    return blocks
