"""Markdown through markdown-it-py: ATX and setext headings are sections (never a '#' inside code)."""

from __future__ import annotations

from markdown_it import MarkdownIt

from writers.extract.types import ExtractedDocument, SectionBuilder

_PARSER = MarkdownIt("commonmark")


def extract_markdown(text: str, mode: str) -> ExtractedDocument:
    builder = SectionBuilder()
    if mode == "raw":
        builder.add(text)
        return ExtractedDocument("markdown", builder.finish())
    lines = text.splitlines(keepends=True)
    tokens = _PARSER.parse(text)
    position = 0
    for index, token in enumerate(tokens):
        if token.type != "heading_open" or token.map is None or token.level != 0:
            continue
        start, end = token.map
        builder.add("".join(lines[position:start]))
        builder.heading(int(token.tag[1]), tokens[index + 1].content)
        builder.add("".join(lines[start:end]))
        position = end
    builder.add("".join(lines[position:]))
    return ExtractedDocument("markdown", builder.finish())
