"""The subset of Azure AI Search's OData ``$filter`` language the emulator understands.

Grammar (what kb's driver emits, plus what the published examples use)::

    expr    := or
    or      := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | primary
    primary := "(" expr ")" | "search.in(" field "," string ["," string] ")" | field op literal | literal
    op      := eq | ne | gt | ge | lt | le
    literal := 'string' ('' escapes a quote) | number | true | false | null

Semantics follow the service: a comparison with a null (missing) field is false, except ``ne`` which is
true when the literal is not null; ``search.in`` on a null field is false; ordering strings is ordinal.
A field the index does not define, or one that is not filterable, is a 400 error, as on the service.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<punct>[(),])"
                    r"|(?P<word>[A-Za-z_][A-Za-z0-9_./]*))")
_OPS = {"eq", "ne", "gt", "ge", "lt", "le"}


class ODataError(ValueError):
    """An invalid filter; the emulator answers 400 with this message."""


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise ODataError(f"Invalid expression: syntax error at position {pos} in '{text}'")
        pos = match.end()
        if match["str"] is not None:
            out.append(("str", match["str"][1:-1].replace("''", "'")))
        elif match["num"] is not None:
            num = match["num"]
            out.append(("num", float(num) if any(c in num for c in ".eE") else int(num)))
        elif match["punct"] is not None:
            out.append((match["punct"], match["punct"]))
        else:
            out.append(("word", match["word"]))
    return out


def _compare(op: str, actual: Any, literal: Any) -> bool:
    if op == "ne":
        return not _compare("eq", actual, literal)
    if actual is None or literal is None:
        return op == "eq" and actual is None and literal is None
    if isinstance(actual, bool) != isinstance(literal, bool):
        return False
    if isinstance(actual, str) != isinstance(literal, str):
        return False
    if op == "eq":
        return actual == literal
    if isinstance(actual, bool):
        raise ODataError("ordering comparisons do not apply to Edm.Boolean fields")
    return {"gt": actual > literal, "ge": actual >= literal, "lt": actual < literal, "le": actual <= literal}[op]


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, dict[str, Any]]) -> None:
        self.tokens, self.pos, self.fields, self.text = _tokens(text), 0, fields, text

    def peek(self, value: str | None = None) -> tuple[str, Any] | None:
        token = self.tokens[self.pos] if self.pos < len(self.tokens) else None
        if value is None or token is None:
            return token
        return token if token[1] == value else None

    def take(self, value: str | None = None) -> tuple[str, Any]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ODataError(f"Invalid expression: expected {value or 'more input'} in '{self.text}'")
        self.pos += 1
        return token

    def parse(self) -> Predicate:
        predicate = self.or_()
        if self.peek() is not None:
            raise ODataError(f"Invalid expression: unexpected '{self.peek()[1]}' in '{self.text}'")  # type: ignore[index]
        return predicate

    def or_(self) -> Predicate:
        parts = [self.and_()]
        while self.peek("or"):
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda d: any(p(d) for p in parts))

    def and_(self) -> Predicate:
        parts = [self.unary()]
        while self.peek("and"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda d: all(p(d) for p in parts))

    def unary(self) -> Predicate:
        if self.peek("not"):
            self.take()
            inner = self.unary()
            return lambda d: not inner(d)
        return self.primary()

    def field(self, name: str) -> str:
        spec = self.fields.get(name)
        if spec is None:
            raise ODataError(f"Invalid expression: Could not find a property named '{name}' on type "
                             "'search.document'.")
        if not spec.get("filterable", True):
            raise ODataError(f"Invalid expression: The field '{name}' is not filterable.")
        return name

    def literal(self) -> Any:
        kind, value = self.take()
        if kind in ("str", "num"):
            return value
        if kind == "word" and value in ("true", "false"):
            return value == "true"
        if kind == "word" and value == "null":
            return None
        raise ODataError(f"Invalid expression: expected a literal, got '{value}' in '{self.text}'")

    def primary(self) -> Predicate:
        if self.peek("("):
            self.take()
            inner = self.or_()
            self.take(")")
            return inner
        kind, word = self.take()
        if kind == "word" and word == "search.in":
            self.take("(")
            name = self.field(self.take()[1])
            self.take(",")
            values_text = self.literal()
            delimiters = " ,"
            if self.peek(","):
                self.take()
                delimiters = self.literal()
            self.take(")")
            if not isinstance(values_text, str) or not isinstance(delimiters, str):
                raise ODataError("search.in takes string arguments")
            values = {v for v in re.split("|".join(map(re.escape, delimiters)), values_text) if v != ""}
            return lambda d: isinstance(d.get(name), str) and d.get(name) in values
        if kind == "word" and word in ("true", "false") and not (self.peek() and self.peek()[1] in _OPS):  # type: ignore[index]
            constant = word == "true"
            return lambda d: constant
        if kind != "word":
            raise ODataError(f"Invalid expression: unexpected '{word}' in '{self.text}'")
        name = self.field(word)
        op = self.take()[1]
        if op not in _OPS:
            raise ODataError(f"Invalid expression: unknown operator '{op}' in '{self.text}'")
        literal = self.literal()
        return lambda d: _compare(op, d.get(name), literal)


def compile_filter(text: str | None, fields: Mapping[str, dict[str, Any]]) -> Predicate:
    """A predicate over documents for an OData ``$filter``; ODataError when invalid."""
    if text is None or not text.strip():
        return lambda d: True
    return _Parser(text, fields).parse()
