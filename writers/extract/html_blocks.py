"""Blocks of text from an HTML main-content tree: headings, paragraphs, code, lists and tables as text.

Two trees are read the same way: trafilatura's result (``head rend="h2"``,
``p``, ``code``, ``list``/``item``, ``table``/``row``/``cell``, ``quote``,
inline ``hi``/``ref``/``lb``) and, when trafilatura keeps nothing, the page's
own cleaned HTML (``h1``-``h6``, ``pre``, ``ul``/``ol``/``li``, ``table``).
Code keeps its line breaks and indentation (documentation questions are often
answered by code); everything else is whitespace-normalised. A table is one
line per row, cells joined by `` | ``, so a row stays together in a chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

HTML_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
CODE_TAGS = {"code", "pre"}  # trafilatura's code block is a <code> outside a paragraph; the page's is <pre>
INLINE_PARENTS = {"p", "head", "hi", "ref", "span", "a", "em", "strong", "b", "i", "tt", "label", "cell", "td",
                  "th", *("h1", "h2", "h3", "h4", "h5", "h6")}  # a <code> in these is inline
LINE_BREAK = "\u2028"  # what <br>/<lb> become inside a run of text: str.split() treats it as whitespace
LIST_TAGS = {"list", "ul", "ol", "dl"}
ITEM_TAGS = {"item", "li", "dt", "dd"}
TABLE_TAGS = {"table"}
ROW_TAGS = {"row", "tr"}
CELL_TAGS = {"cell", "td", "th"}
BREAK_TAGS = {"lb", "br"}
# block-level containers of the page's HTML: their children are blocks, not inline text
CONTAINERS = {"div", "section", "article", "main", "body", "blockquote", "quote", "figure", "details", "header",
              "footer", "aside", "nav", "form", "fieldset", "center", "dl", "html", "doc", "summary"}
BLOCK_TAGS = {"p", "head", *HTML_HEADINGS, "pre", *LIST_TAGS, *TABLE_TAGS, *CONTAINERS, "hr"}


@dataclass
class Block:
    kind: str  # heading, text or code
    text: str
    level: int = 0  # headings only


def _tag(element: etree._Element) -> str:
    tag = element.tag  # libxml2's HTML parser and trafilatura write tags in lower case
    return tag if isinstance(tag, str) else ""


def _is_block(element: etree._Element) -> bool:
    tag = _tag(element)
    if tag == "code":
        parent = element.getparent()
        if parent is None:
            return True
        if _tag(parent) in ITEM_TAGS:  # a list item holds inline code and code blocks alike
            return "\n" in "".join(element.itertext()).strip()
        return _tag(parent) not in INLINE_PARENTS
    return tag in BLOCK_TAGS


def _heading_level(element: etree._Element) -> int:
    tag = _tag(element)
    if tag == "head":  # trafilatura: <head rend="h2">; a head without a level is a level-2 heading
        rend = (element.get("rend") or "h2").lower()
        return int(rend[1]) if len(rend) == 2 and rend[0] == "h" and rend[1] in "123456" else 2
    return HTML_HEADINGS.get(tag, 0)


def inline_text(element: etree._Element) -> str:
    """The element's text as one run: line breaks kept as newlines, everything else joined."""
    parts: list[str] = [element.text or ""]
    for child in element:
        tag = _tag(child)
        if tag in BREAK_TAGS:
            parts.append(LINE_BREAK)
        elif tag:  # not a comment or processing instruction
            parts.append(inline_text(child))
            if _is_block(child) or tag in ITEM_TAGS or tag in ROW_TAGS:
                parts.append(" ")  # block children inside an inline run (a <div> in a <td>) stay apart
        parts.append(child.tail or "")
    return "".join(parts)


def _normalise(text: str) -> str:
    """A paragraph on one line (the source's own line wrapping is not meaning); <br> breaks kept."""
    # the pilcrow is Sphinx's and many generators' anchor link beside headings and signatures, never text
    text = text.replace("\u00b6", "")
    return "\n".join(" ".join(line.split()) for line in text.split(LINE_BREAK) if line.strip())


def code_text(element: etree._Element) -> str:
    lines = "".join(element.itertext()).replace("\r\n", "\n").replace("\t", "    ").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(line.rstrip() for line in lines)


def _table_rows(table: etree._Element) -> Iterator[str]:
    for row in table.iter():
        if _tag(row) not in ROW_TAGS:
            continue
        cells = [" ".join(inline_text(c).split()) for c in row if _tag(c) in CELL_TAGS]
        cells = [c for c in cells if c]
        if cells:
            yield " | ".join(cells)


def _has_blocks(element: etree._Element) -> bool:
    return any(_is_block(child) for child in element)


def iter_blocks(element: etree._Element) -> Iterator[Block]:
    """The blocks inside ``element``, in document order."""
    tag = _tag(element)
    level = _heading_level(element)
    if level:
        title = " ".join(inline_text(element).split()).rstrip("¶#").strip()  # Sphinx/mdBook anchor marks
        if title:
            yield Block("heading", title, level)
        return
    if tag == "pre" or (tag == "code" and _is_block(element)):
        code = code_text(element)
        if code.strip():
            yield Block("code", code)
        return
    if tag in TABLE_TAGS:
        rows = list(_table_rows(element))
        if rows:
            yield Block("text", "\n".join(rows))
        return
    if tag in LIST_TAGS:
        yield from _list_blocks(element, 0)
        return
    if not _has_blocks(element):
        text = _normalise(inline_text(element))
        if text:
            yield Block("text", text)
        return
    # mixed content: text runs between block children are paragraphs of their own
    run: list[str] = [element.text or ""]
    for child in element:
        child_tag = _tag(child)
        if _is_block(child):
            text = _normalise("".join(run))
            if text:
                yield Block("text", text)
            run = []
            yield from iter_blocks(child)
        elif child_tag in BREAK_TAGS:
            run.append(LINE_BREAK)
        elif child_tag:
            run.append(inline_text(child))
        run.append(child.tail or "")
    text = _normalise("".join(run))
    if text:
        yield Block("text", text)


def _list_blocks(element: etree._Element, depth: int) -> Iterator[Block]:
    """One line per item (``- text``, nested lists indented); an item's paragraphs are lines of their own and
    its code blocks and tables are blocks of their own, in order."""
    lines: list[str] = []
    indent = "  " * depth
    for item in element:
        if _tag(item) not in ITEM_TAGS:
            continue
        if not _has_blocks(item):
            text = " ".join(inline_text(item).split())
            if text:
                lines.append(f"{indent}- {text}")
            continue
        marker = f"{indent}- "
        run: list[str] = [item.text or ""]
        for child in [*item, None]:
            if child is not None and not _is_block(child):
                run.append(LINE_BREAK if _tag(child) in BREAK_TAGS else inline_text(child))
                run.append(child.tail or "")
                continue
            text = _normalise("".join(run))
            if text:
                lines.extend(f"{marker}{line}" if n == 0 else f"{indent}  {line}"
                             for n, line in enumerate(text.split("\n")))
                marker = f"{indent}  "
            run = [] if child is None else [child.tail or ""]
            if child is None:
                break
            if _tag(child) in LIST_TAGS:
                lines.extend(b.text for b in _list_blocks(child, depth + 1))
            elif _tag(child) in CODE_TAGS or _tag(child) in TABLE_TAGS:
                if lines:
                    yield Block("text", "\n".join(lines))
                    lines = []
                yield from iter_blocks(child)
            else:  # a paragraph or a container: its blocks' text as lines of the item
                for block in iter_blocks(child):
                    if block.kind == "code":
                        if lines:
                            yield Block("text", "\n".join(lines))
                            lines = []
                        yield block
                    else:
                        lines.extend(f"{marker}{line}" for line in block.text.split("\n"))
                        marker = f"{indent}  "
    if lines:
        yield Block("text", "\n".join(lines))
