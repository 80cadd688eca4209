"""Code blocks through trafilatura, whole: each <pre> goes in as a one-word token and comes back as its code.

trafilatura collapses the whitespace of code inside list items, splits a
<pre> holding markup into pieces, and drops some listings with the figures
that hold them; documentation questions are often answered by code. So each
<pre> of the content is replaced by a token (``kbcode00042zq``) before
extraction, and every token in the result becomes the original code again.
A token trafilatura left out comes back after the text that preceded it on
the page, when that text was kept: code is never lost where its context was
not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from writers.extract.html_blocks import Block, code_text

TOKEN = re.compile(r"(kbcode\d{5}zq)")
ANCHOR_CHARS = 1000  # of the text before a code block, kept to find the place again
ANCHOR_MATCH = 30  # characters that must match; up to ANCHOR_SKIP_WORDS words just before the code may be gone
ANCHOR_SKIP_WORDS = 60  # (a listing's file name or caption, a sidebar, left out with it)


@dataclass
class HiddenCode:
    code: str
    anchor: str  # the normalised text just before it on the page ("" when it opens the content)


def _flat(text: str) -> str:
    return " ".join(text.replace("\u00b6", "").split())


def hide_code(root: etree._Element) -> dict[str, HiddenCode]:
    """Replace each outermost <pre> under ``root`` by a token; token -> the code and the text before it."""
    hidden: dict[str, HiddenCode] = {}
    for pre in list(root.iter("pre")):
        if any(ancestor.tag == "pre" for ancestor in pre.iterancestors()):
            continue
        code = code_text(pre)
        if not code.strip():
            continue
        token = f"kbcode{len(hidden):05d}zq"
        hidden[token] = HiddenCode(code, "")
        for child in list(pre):
            pre.remove(child)
        pre.text = token
    if hidden:
        before = TOKEN.split(_flat(" ".join(root.itertext())))
        for index in range(1, len(before), 2):
            text = TOKEN.sub(" ", before[index - 1]).strip()
            hidden[before[index]].anchor = _flat(text)[-ANCHOR_CHARS:]
    return hidden


def restore_code(blocks: list[Block], hidden: dict[str, HiddenCode]) -> list[Block]:
    """The blocks with each token back as a code block of its own (the text around it split), and the code
    trafilatura left out put back after its anchor text."""
    if not hidden:
        return blocks
    restored: list[Block] = []
    seen: set[str] = set()
    for block in blocks:
        if block.kind == "heading" or "kbcode" not in block.text:
            restored.append(block)
            continue
        for piece in TOKEN.split(block.text):
            if piece in hidden:
                restored.append(Block("code", hidden[piece].code))
                seen.add(piece)
            elif piece.strip(" -\n"):
                restored.append(Block("text", piece.strip("\n")))
    missing = [token for token in hidden if token not in seen and hidden[token].anchor]
    for token in missing:
        position = _after_anchor(restored, hidden[token].anchor)
        if position is not None:
            restored.insert(position, Block("code", hidden[token].code))
    return restored


def _after_anchor(blocks: list[Block], anchor: str) -> int | None:
    """Where the code that followed ``anchor`` on the page goes: after the block holding the anchor's end (or
    the end of its text a few words earlier), and after the code blocks already there."""
    words = anchor.split()
    texts = [_flat(b.text) if b.kind != "code" else "" for b in blocks]
    for skip in range(min(ANCHOR_SKIP_WORDS, len(words))):
        candidate = " ".join(words[: len(words) - skip])[-ANCHOR_MATCH:]
        if len(candidate) < ANCHOR_MATCH // 2:
            return None
        for index, text in enumerate(texts):
            if text.endswith(candidate) or (skip and candidate in text):
                position = index + 1
                while position < len(blocks) and blocks[position].kind == "code":
                    position += 1  # after the code blocks already there: the page's order
                return position
    return None
