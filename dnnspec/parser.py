"""Text -> AST: statements with raw values and source spans.

The grammar (``grammar/dnnspec.lark``, installed as ``dnnspec.grammar``) only knows the
shape of a statement::

    head  positional...  name=value...  { block }

Lark's LALR parser calls this module's inline callbacks, which build small frozen
dataclasses (:class:`Stmt`, :class:`Arg`, :class:`Value`) carrying raw Python values (see
:mod:`dnnspec.schema`) and spans; no parse tree is built, and nothing recurses. Nesting
deeper than ``MAX_NESTING`` is refused by a linear scan first. The parser reports every
syntax error it can find: after an error it blanks the offending line (keeping the braces
balanced) and parses again, so one run lists several mistakes (up to
``MAX_SYNTAX_ERRORS``, within ``RETRY_BUDGET_CHARS`` of parsing). A 1 MB spec parses in
about a second.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput

from .errors import Diagnostic, Span, SpecError
from .schema import Quantity, Range, to_float

MAX_SYNTAX_ERRORS = 20
# After the first syntax error the parser blanks the line and parses again, to list more
# errors; the retries stop once this many characters were parsed in all (a 1 MB file
# with errors near its end gets two or three passes, not twenty).
RETRY_BUDGET_CHARS = 2_000_000
# Blocks and lists nest at most this deep ({ and [ counted together). The front end
# walks blocks recursively, and no real spec nests more than a few levels.
MAX_NESTING = 32


@dataclass(frozen=True)
class Value:
    """A raw value and where it was written. ``kind``: number, string, name, list, quantity, range, call."""

    raw: Any
    span: Span
    kind: str


@dataclass(frozen=True)
class Call:
    """A search-space value such as ``choice(64, 128)`` or ``uniform(0.1, 0.5)`` (dnnspec.search.space).

    ``args`` keep their spans, so the search module can point at each alternative. A plain
    spec holding one is refused by the front end with a pointer to ``dnnspec search``.
    """

    name: str
    name_span: Span
    args: tuple[Value, ...]


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


@dataclass(frozen=True)
class _Block:
    """A parsed ``{ ... }``: its statements and the span of its closing brace."""

    stmts: tuple[Stmt, ...]
    end: Span


def grammar_text() -> str:
    """The grammar, from the installed ``dnnspec.grammar`` package or the repo checkout."""
    try:
        return resources.files("dnnspec.grammar").joinpath("dnnspec.lark").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        repo = Path(__file__).resolve().parent.parent / "grammar" / "dnnspec.lark"
        return repo.read_text(encoding="utf-8")


class _ToAst(Transformer):
    """The LALR parser's inline callbacks: each reduction builds its AST node directly.

    No parse tree is built, which makes parsing about 2.5x faster than building Lark's
    tree and transforming it, and uses no recursion however deep blocks nest. Spans are
    taken from the tokens (the grammar keeps brackets and braces), from a node's first
    token to its last. ``file`` is set by :func:`_parse` under its lock.
    """

    file = "<string>"

    def _tok(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def _join(self, first: Span, last: Span) -> Span:
        return Span(self.file, first.line, first.col, last.end_line, last.end_col)

    def number(self, items):
        return Value(_number(items[0]), self._tok(items[0]), "number")

    def fraction(self, items):
        num, den = _number(items[0]), _number(items[1])
        return Value(_divide(num, den), self._join(self._tok(items[0]), self._tok(items[1])), "number")

    def range(self, items):
        lo, hi = (to_float(_number(t)) for t in items)
        return Value(Range(lo, hi), self._join(self._tok(items[0]), self._tok(items[1])), "range")

    def quantity(self, items):
        m = re.fullmatch(r"(.*?)(px|deg|%)", str(items[0]))
        return Value(Quantity(_number(m.group(1)), m.group(2)), self._tok(items[0]), "quantity")

    def string(self, items):
        return Value(_unquote(str(items[0])), self._tok(items[0]), "string")

    def name(self, items):
        text = str(items[0])
        return Value({"true": True, "false": False}.get(text, text), self._tok(items[0]), "name")

    def list(self, items):
        span = self._join(self._tok(items[0]), self._tok(items[-1]))
        return Value([v.raw for v in items[1:-1]], span, "list")

    def call(self, items):
        head, args = items[0], tuple(v for v in items[2:-1] if isinstance(v, Value))
        return Value(Call(str(head), self._tok(head), args), self._join(self._tok(head), self._tok(items[-1])), "call")

    def option(self, items):
        name, value = items
        return Arg(str(name), value, self._join(self._tok(name), value.span))

    def block(self, items):
        return _Block(tuple(items[1:-1]), self._tok(items[-1]))

    def stmt(self, items):
        head: Token = items[0]
        block = items[-1] if isinstance(items[-1], _Block) else None
        args = tuple(a if isinstance(a, Arg) else Arg(None, a, a.span)
                     for a in items[1:] if isinstance(a, (Arg, Value)))
        head_span = self._tok(head)
        last = block.end if block else args[-1].span if args else head_span
        return Stmt(str(head), head_span, args, block.stmts if block else None, self._join(head_span, last))

    def start(self, items):
        return tuple(items)


@functools.lru_cache(maxsize=1)
def _parser() -> tuple[Lark, _ToAst]:
    ast = _ToAst()
    return Lark(grammar_text(), parser="lalr", lexer="contextual", transformer=ast, maybe_placeholders=False), ast


_PARSE_LOCK = threading.Lock()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: the parse makes a few objects per token, none
    in a cycle, and the collector's passes over them cost a third of a large file's parse."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse(text: str, path: str) -> tuple[Stmt, ...]:
    """One Lark parse into statements (UnexpectedInput on a syntax error)."""
    lark, ast = _parser()
    with _PARSE_LOCK, _gc_paused():
        ast.file = path  # the one shared transformer builds this file's spans
        return lark.parse(text)


def _number(text: str | Token) -> int | float:
    s = str(text)
    try:
        return int(s)
    except ValueError:  # a decimal or exponent, or an int over Python's 4300-digit limit (inf)
        return float(s)


def _divide(num: int | float, den: int | float) -> float:
    """``num / den`` as the fraction ``1/255`` means it; inf (rejected by every range) for x/0 or overflow."""
    if den == 0:
        return math.inf
    try:
        return num / den
    except OverflowError:  # int / int too large for a float
        return math.inf if (num > 0) == (den > 0) else -math.inf


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
    check_nesting(text, path)
    diags: list[Diagnostic] = []
    work, parsed = text, 0
    for _ in range(MAX_SYNTAX_ERRORS):
        try:
            stmts = _parse(work + "\n", path)
        except UnexpectedInput as e:
            diag, line = _syntax_diagnostic(e, work, text, path)
            if not any(d.span.line == diag.span.line for d in diags):
                diags.append(diag)
            pos = getattr(e, "pos_in_stream", None)
            parsed += pos if pos is not None and pos >= 0 else len(work)
            if line is None or parsed > RETRY_BUDGET_CHARS:
                break
            blanked = _blank_line(work, line)
            if blanked == work:
                break
            work = blanked
            continue
        if diags:
            break
        return stmts
    raise SpecError(diags, text)


# Strings and comments (whose brackets do not count), or one bracket or brace.
_NESTING_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[\[\]{}]')


def check_nesting(text: str, path: str) -> None:
    """SpecError at the first '{' or '[' that opens more than MAX_NESTING levels.

    A linear scan before parsing: deeper nesting has no use, and would only make the
    front end's recursive walk over blocks (and messages quoting nested lists) costly.
    """
    depth = 0
    for m in _NESTING_TOKENS.finditer(text):
        ch = m.group()
        if ch in "{[":
            depth += 1
            if depth > MAX_NESTING:
                line, col = _line_col(text, m.start())
                hint = ("a list holds numbers, names or strings, not lists" if ch == "[" else
                        "flatten the nesting: repeat blocks multiply, so one 'repeat N' with the "
                        "product of the counts does the same")
                raise SpecError(Diagnostic(f"syntax error: more than {MAX_NESTING} nested blocks and lists",
                                           Span(path, line, col, line, col + 1), hint), text)
        elif ch in "}]":
            depth = max(0, depth - 1)


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
    "LSQB": "'['", "RSQB": "']'", "LPAR": "'('", "RPAR": "')'", "SLASH": "'/'", "__ANON_0": "'..'",
    "$END": "end of file",
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
    if tok.type in ("LPAR", "RPAR"):
        return ("lists are written with brackets: [1, 28, 28]; a search value is written "
                "name(...) with no space, like choice(64, 128)")
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
    opened: list[int] = []
    for m in _NESTING_TOKENS.finditer(text):
        if m.group() == "{":
            opened.append(m.start())
        elif m.group() == "}" and opened:
            opened.pop()
    if opened:
        ln, col = _line_col(text, opened[-1])
        return Diagnostic("syntax error: this '{' is never closed", Span(path, ln, col, ln, col + 1),
                          "add '}' on its own line after the block's last statement")
    lines = text.split("\n")
    return Diagnostic("syntax error: unexpected end of file", Span(path, len(lines), 1, len(lines), 1),
                      "the last statement is incomplete")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of offset ``pos``."""
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1
