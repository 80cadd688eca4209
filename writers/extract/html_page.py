"""An HTML page as an lxml tree, and the element that holds its main content.

Parsing: the bytes go to libxml2 in the page's own charset (a BOM, else its
``<meta charset>`` or ``http-equiv`` declaration, else UTF-8 when the bytes are
valid UTF-8); only a page that declares nothing and is not UTF-8 is decoded by
trafilatura's detection first. Comments, processing instructions and what never
holds text (scripts, styles, templates, SVG, form controls) are dropped.

Main content: the page's ``<main>`` (or ``role="main"``, or a single
``<article>``) when it holds at least a quarter of the body's text; else the
body. A page a known documentation generator wrote without marking its content
(DocBook XSL: its generator ``<meta>``) has its navigation blocks dropped by
the generator's own layout. Inside the content, navigation regions
(``<nav>``, ``role="navigation"``/``search``/``banner``/``contentinfo``, hidden
elements; ``<aside>`` too unless the page marked its main content, where an
aside is the article's own) and a page-level ``<header>``/``<footer>`` without
an ``<h1>`` are dropped, but only when they hold less than half of its text: a
rule that matches the page's main text never removes it (real sites put
``sidebar`` or ``nav`` on the outermost elements). No rule reads class names,
except a known generator's layout, matched by its own generator ``<meta>``.
"""

from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass

import lxml.html
from lxml import etree

from kb_base.errors import EmptyDocumentError, ExtractionError

NEVER_TEXT = ("script", "style", "noscript", "template", "svg", "iframe", "object", "embed", "canvas",
              "button", "select", "textarea", "datalist", "input")
CHROME_TAGS = ("nav", "aside")
CHROME_ROLES = {"navigation", "search", "banner", "contentinfo", "menu", "menubar", "complementary"}
PAGE_CHROME_TAGS = ("header", "footer")
MAIN_SHARE = 0.25  # a <main> holding less of the body's text than this is a misused tag, not the content
CHROME_SHARE = 0.5  # a "chrome" element holding at least this much of the content's text is the content
# documentation generators that mark no main content but always lay their pages out the same way: the
# generator <meta> they write -> the page chrome of that layout, relative to <body>
GENERATOR_CHROME = {
    # DocBook XSL, chunked (PostgreSQL, FreeBSD, many GNU manuals): Prev/Up/Next/Home tables around the text
    "docbook xsl": "./div[@class='navheader' or @class='navfooter']",
    # GTK-Doc (GLib, GTK, libxslt, libtasn1 API references): its own navigation table and footer line
    "gtk-doc": "./table[@class='navigation'] | ./div[@class='footer']",
}
PRESCAN_BYTES = 4096  # where a page declares its charset (the HTML standard's prescan reads 1024)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_TEXT_LENGTH = etree.XPath("string-length(normalize-space(.))")  # in libxml2: a page's text is not copied
_TEXT = etree.XPath("string(.)")
_ROLES = etree.XPath(".//@role")
_HIDDEN = etree.XPath(".//@hidden | .//@aria-hidden")


@dataclass
class MainContent:
    root: etree._Element
    marked: bool  # the page itself says where its content is (<main>, role="main", an <article>, its layout)


def text_length(element: etree._Element) -> int:
    """Characters of visible text under ``element``, runs of whitespace counted as one."""
    return int(_TEXT_LENGTH(element))


def text_of(element: etree._Element) -> str:
    """All the text under ``element``, as one string."""
    return str(_TEXT(element))


def _charset(data: bytes) -> str | None:
    """The page's charset when it states one (BOM, <meta>) or is valid UTF-8; None: detection's job."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    declared = _META_CHARSET.search(data[:PRESCAN_BYTES])
    if declared:
        try:
            name = codecs.lookup(declared.group(1).decode("ascii")).name
        except (LookupError, UnicodeDecodeError):
            name = None  # a charset Python does not know: the bytes decide
        if name is not None:
            # a page declaring UTF-16 in an ASCII <meta> is not UTF-16 (the standard reads it as UTF-8)
            return "utf-8" if name.startswith("utf-16") else name
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "utf-8"


@functools.lru_cache(maxsize=32)
def _parser(charset: str) -> etree.HTMLParser:
    # lxml's own elements, not lxml.html's: those are looked up by a Python function for every element
    # touched, which made walking a tree four times slower (trafilatura gets lxml.html elements: html.py)
    return etree.HTMLParser(encoding=charset, remove_comments=True, remove_pis=True)


_COMMENTS = re.compile(rb"<!--.*?(?:-->|$)", re.S)


def parse_page(data: bytes) -> etree._Element:
    """The page as an lxml tree, decoded in its own charset, without what never holds text."""
    charset = _charset(data)
    tree = None
    if charset is not None:
        try:
            tree = etree.fromstring(data, parser=_parser(charset))
        except (etree.ParserError, etree.XMLSyntaxError, ValueError, LookupError):
            tree = None  # libxml2 does not know that charset, or found nothing: the slower road below
    if tree is None:  # trafilatura's charset detection, for pages that do not say theirs
        from trafilatura.utils import load_html

        tree = load_html(data)
    if tree is None:  # trafilatura refuses fragments it finds dubious; lxml reads anything
        try:
            tree = lxml.html.document_fromstring(data)
        except (etree.ParserError, ValueError) as exc:
            if not _COMMENTS.sub(b"", data).strip(b" \t\r\n\x0c\xef\xbb\xbf"):
                # nothing to index is not a failure: `kb sync` reports it as empty and goes on
                raise EmptyDocumentError("an empty HTML file (nothing but whitespace and comments)") from None
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


def _known_layout_chrome(tree: etree._Element, body: etree._Element) -> list[etree._Element]:
    """The page chrome of a known generator's layout, when the page says it is one and has that chrome (a
    generator's other layouts, such as DocBook's single-page books, are not known: empty)."""
    for meta in tree.iterfind("head/meta[@name='generator']"):
        generator = (meta.get("content") or "").lower()
        for name, chrome in GENERATOR_CHROME.items():
            found = body.xpath(chrome) if generator.startswith(name) else []
            if found:
                return found
    return []


def main_content(tree: etree._Element) -> MainContent:
    """The element holding the page's main text, with navigation regions that do not hold it removed."""
    body = tree.find("body") if tree.tag == "html" else None
    body = body if body is not None else tree
    body_length = text_length(body)
    # attribute nodes, then their elements: a predicate on every element ([@role='main']) costs libxml2 ten
    # times more
    candidates = [*tree.iter("main"), *(role.getparent() for role in _ROLES(tree) if role.lower() == "main")]
    articles = list(tree.iter("article"))
    if not candidates and len(articles) == 1:
        candidates = articles
    best, best_length = None, -1
    for candidate in candidates:
        length = text_length(candidate)
        if length > best_length:
            best, best_length = candidate, length
    marked = best is not None and best_length >= MAIN_SHARE * body_length
    root = best if marked else body
    root_length = (best_length if marked else body_length) or 1
    doomed = []
    if not marked:
        layout = _known_layout_chrome(tree, body)
        if layout:
            marked = True
            doomed += [element for element in layout if text_length(element) < CHROME_SHARE * root_length]
    # the candidates by tag and by attribute, found by libxml2: a Python test of every element costs more
    # than the rest of the page's reading
    flagged = [attribute.getparent() for attribute in (*_ROLES(root), *_HIDDEN(root))]
    chrome = [element for element in (*root.iter(*CHROME_TAGS), *flagged)
              if element is not root and _is_chrome(element, root is not body)]
    if root is body:  # a page-level header or footer, unless it holds the page's title
        chrome += [element for element in body if element.tag in PAGE_CHROME_TAGS and not element.xpath(".//h1")]
    doomed += [element for element in chrome if text_length(element) < CHROME_SHARE * root_length]
    for element in doomed:
        if element.getparent() is not None:  # not already gone with an ancestor
            drop(element)
    return MainContent(root, marked)


def drop(element: etree._Element) -> None:
    """Remove ``element`` and keep its tail text (which belongs to its parent)."""
    parent = element.getparent()
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)
