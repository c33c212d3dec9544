"""Text -> AST: statements with raw values and source spans.

The grammar (``grammar/dnnspec.lark``, installed as ``dnnspec.grammar``) only knows the
shape of a statement::

    head  positional...  name=value...  { block }

This module turns Lark's tree into small frozen dataclasses (:class:`Stmt`, :class:`Arg`,
:class:`Value`) carrying raw Python values (see :mod:`dnnspec.schema`) and spans. It
reports every syntax error it can find: after an error it blanks the offending line
(keeping the braces balanced) and parses again, so one run lists several mistakes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, v_args

from .errors import Diagnostic, Span, SpecError
from .schema import Quantity, Range

MAX_SYNTAX_ERRORS = 20


@dataclass(frozen=True)
class Value:
    """A raw value and where it was written. ``kind``: number, string, name, list, quantity, range."""

    raw: Any
    span: Span
    kind: str


@dataclass(frozen=True)
class Arg:
    """A positional value (``name`` is None) or a ``name=value`` option."""

    name: str | None
    value: Value
    span: Span


@dataclass(frozen=True)
class Stmt:
    """``head args... { body }``; ``body`` is None when no block was written."""

    head: str
    head_span: Span
    args: tuple[Arg, ...]
    body: tuple[Stmt, ...] | None
    span: Span

    @property
    def positional(self) -> list[Value]:
        return [a.value for a in self.args if a.name is None]

    @property
    def named(self) -> list[Arg]:
        return [a for a in self.args if a.name is not None]


def grammar_text() -> str:
    """The grammar, from the installed ``dnnspec.grammar`` package or the repo checkout."""
    try:
        return resources.files("dnnspec.grammar").joinpath("dnnspec.lark").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        repo = Path(__file__).resolve().parent.parent / "grammar" / "dnnspec.lark"
        return repo.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False)


def _span(file: str, meta_or_tok: Any) -> Span:
    m = meta_or_tok
    return Span(file, m.line, m.column, m.end_line, m.end_column)


class _ToAst(Transformer):
    """One-line methods: the grammar already shaped the tree."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _v(self, raw: Any, meta: Any, kind: str) -> Value:
        return Value(raw, _span(self.file, meta), kind)

    @v_args(meta=True)
    def number(self, meta, items):
        return self._v(_number(items[0]), meta, "number")

    @v_args(meta=True)
    def fraction(self, meta, items):
        num, den = _number(items[0]), _number(items[1])
        return self._v(num / den if den != 0 else float("inf"), meta, "number")

    @v_args(meta=True)
    def range(self, meta, items):
        return self._v(Range(float(_number(items[0])), float(_number(items[1]))), meta, "range")

    @v_args(meta=True)
    def quantity(self, meta, items):
        m = re.fullmatch(r"(.*?)(px|deg|%)", str(items[0]))
        return self._v(Quantity(_number(m.group(1)), m.group(2)), meta, "quantity")

    @v_args(meta=True)
    def string(self, meta, items):
        return self._v(_unquote(str(items[0])), meta, "string")

    @v_args(meta=True)
    def name(self, meta, items):
        text = str(items[0])
        raw = {"true": True, "false": False}.get(text, text)
        return self._v(raw, meta, "name")

    @v_args(meta=True)
    def list(self, meta, items):
        return self._v([v.raw for v in items], meta, "list")

    @v_args(meta=True)
    def option(self, meta, items):
        return Arg(str(items[0]), items[1], _span(self.file, meta))

    def block(self, items):
        return tuple(items)

    @v_args(meta=True)
    def stmt(self, meta, items):
        head: Token = items[0]
        body = items[-1] if items and isinstance(items[-1], tuple) else None
        args = tuple(a if isinstance(a, Arg) else Arg(None, a, a.span)
                     for a in items[1:] if isinstance(a, (Arg, Value)))
        return Stmt(str(head), _span(self.file, head), args, body, _span(self.file, meta))

    def start(self, items):
        return tuple(items)


def _number(text: str | Token) -> int | float:
    s = str(text)
    try:
        return int(s)
    except ValueError:
        return float(s)


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def normalize_text(text: str) -> str:
    """Drop a UTF-8 BOM and turn CRLF / CR line endings into LF (columns stay the same)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_ast(text: str, path: str = "<string>") -> tuple[Stmt, ...]:
    """Parse normalised text into statements, or raise SpecError with every syntax error found."""
    diags: list[Diagnostic] = []
    work = text
    for _ in range(MAX_SYNTAX_ERRORS):
        try:
            tree = _lark().parse(work + "\n")
        except UnexpectedInput as e:
            diag, line = _syntax_diagnostic(e, work, text, path)
            if not any(d.span.line == diag.span.line for d in diags):
                diags.append(diag)
            if line is None:
                break
            blanked = _blank_line(work, line)
            if blanked == work:
                break
            work = blanked
            continue
        if diags:
            break
        return _ToAst(path).transform(tree)
    raise SpecError(diags, text)


def _blank_line(text: str, line: int) -> str:
    """Replace one line by a placeholder that keeps the braces balanced."""
    lines = text.split("\n")
    if not 0 < line <= len(lines):
        return text
    old = lines[line - 1]
    net = old.count("{") - old.count("}")
    lines[line - 1] = " ".join(["_ {"] * net) if net > 0 else "}" * (-net)
    return "\n".join(lines)


# --- syntax error messages ------------------------------------------------------------

_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "QUANTITY": "a number with a unit", "STRING": "a quoted string",
    "_NL": "end of line", "_SEP": "','", "COMMA": "','", "EQUAL": "'='", "LBRACE": "'{'", "RBRACE": "'}'",
    "LSQB": "'['", "RSQB": "']'", "SLASH": "'/'", "__ANON_0": "'..'", "$END": "end of file",
}

_CHAR_HINTS = {
    ":": "options are written name=value, not name: value",
    "(": "lists are written with brackets: [1, 28, 28]",
    ")": "lists are written with brackets: [1, 28, 28]",
    "'": "strings use double quotes: \"text\"",
    ";": "write one statement per line; no semicolons",
}


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    return f"'{tok}'" if len(str(tok)) <= 30 else f"'{str(tok)[:27]}...'"


def _expected(names: set[str]) -> str:
    words = sorted({_TOKEN_NAMES.get(n, f"'{n.lower()}'") for n in names})
    return ", ".join(words[:6])


def _syntax_diagnostic(e: UnexpectedInput, work: str, text: str, path: str) -> tuple[Diagnostic, int | None]:
    """A Diagnostic for one Lark error, and the line to blank before retrying (None: give up)."""
    if isinstance(e, UnexpectedCharacters):
        ch = work[e.pos_in_stream] if e.pos_in_stream < len(work) else "?"
        shown = ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"U+{ord(ch):04X}"
        span = Span(path, e.line, e.column, e.line, e.column + 1)
        hint = _CHAR_HINTS.get(ch, "remove it, or put text in double quotes")
        if ch == '"':
            hint = "this string is not closed on its line"
        return Diagnostic(f"syntax error: unexpected character '{shown}'", span, hint), e.line
    tok = getattr(e, "token", None)
    if tok is None or tok.type == "$END" or getattr(tok, "line", None) is None:
        return _eof_diagnostic(text, path), None
    span = Span(path, tok.line, tok.column, tok.line, tok.column + max(1, len(str(tok).split("\n")[0])))
    expected = getattr(e, "expected", set()) or set()
    msg = f"syntax error: unexpected {_describe_token(tok)}"
    line_before = work.split("\n")[tok.line - 1][:tok.column - 1]
    in_list = line_before.count("[") > line_before.count("]")
    return Diagnostic(msg, span, _token_hint(tok, expected, in_list)), tok.line


def _token_hint(tok: Token, expected: set[str], in_list: bool) -> str:
    if in_list and tok.type != "EQUAL":
        return "a list needs ']' to close it, with ',' between its values"
    if tok.type == "EQUAL":
        return "an option is written name=value with a name before '='"
    if tok.type == "RBRACE":
        return "this '}' closes no block: remove it or add the '{' it belongs to"
    if tok.type == "LBRACE":
        return "a block follows a statement name on the same line, like: layers {"
    if tok.type == "_NL":
        return f"the line ends too early: expected {_expected(expected)}"
    if tok.type in ("NUMBER", "QUANTITY", "STRING", "LSQB") and expected <= {"_NL", "RBRACE"}:
        return "a statement starts with a name, like: dense 10"
    return f"expected {_expected(expected)}"


def _eof_diagnostic(text: str, path: str) -> Diagnostic:
    """Unexpected end of file: point at the '{' that is never closed, if there is one."""
    opened: list[tuple[int, int]] = []
    for ln, line in enumerate(text.split("\n"), 1):
        code = re.sub(r'"([^"\\\n]|\\.)*"', '""', line).split("#")[0]
        for col, ch in enumerate(code, 1):
            if ch == "{":
                opened.append((ln, col))
            elif ch == "}" and opened:
                opened.pop()
    if opened:
        ln, col = opened[-1]
        return Diagnostic("syntax error: this '{' is never closed", Span(path, ln, col, ln, col + 1),
                          "add '}' on its own line after the block's last statement")
    lines = text.split("\n")
    return Diagnostic("syntax error: unexpected end of file", Span(path, len(lines), 1, len(lines), 1),
                      "the last statement is incomplete")
