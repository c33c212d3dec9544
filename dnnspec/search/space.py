"""Search spaces: a spec with ``choice(...)``, ranges, ``choose { ... }`` and ``budget`` -> plain candidate specs.

The search constructs (docs/search.md)::

    dense choice(64, 128, 256)            # any value: one of these (any value forms)
    optimizer adam lr=loguniform(1e-4, 1e-2)   # a float, log-uniform in [lo, hi]
    dropout uniform(0.1, 0.5)             # a float, uniform in [lo, hi]
    repeat int(1, 4) { ... }              # an integer in lo..hi (both included)
    choose {                              # one of the statements in the block:
      batchnorm                           #   a statement,
      seq {                               #   several (the body of a seq block),
        dense 64
        relu
      }
      none                                #   or nothing at all
    }
    budget params=1e6 flops=5e7           # candidates over either are invalid

A space is a list of :class:`Dim` (one per construct, in the file's order); a candidate is
one pick per dimension (an index, or a float for uniform/loguniform). Expansion works on
the parser's AST and the source text: the chosen value's source text replaces the
construct's span, unchosen alternatives and the budget line are blanked (newlines kept),
so every candidate keeps the search file's line numbers and goes through the normal front
end unchanged. The front end calls :func:`refuse_search` so that ``check``/``train`` on a
search spec say to use ``dnnspec search``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Diagnostic, Span, SpecError
from ..parser import Call, Stmt, Value, normalize_text, parse_ast

FUNCTIONS = ("choice", "uniform", "loguniform", "int")
CHOOSE, NONE, SEQ, BUDGET = "choose", "none", "seq", "budget"
BUDGET_OPTIONS = ("params", "flops")
MAX_GRID = 100_000  # a grid larger than this is sampled (--strategy random / halving)


@dataclass(frozen=True)
class Dim:
    """One searchable place. ``kind``: choice, uniform, loguniform, int or choose.

    ``texts``: for choice, each alternative's source text; for choose, each alternative as a
    (start, end) character range of the text to keep ((0, 0) for ``none``). ``lo``/``hi``: a range.
    """

    kind: str
    span: Span
    texts: tuple[Any, ...] = ()
    lo: float = 0.0
    hi: float = 0.0

    @property
    def size(self) -> int | None:
        """Number of values, None for a continuous range."""
        if self.kind in ("choice", CHOOSE):
            return len(self.texts)
        if self.kind == "int":
            return int(self.hi - self.lo) + 1
        return None

    def sample(self, rng: np.random.Generator) -> float | int:
        """A random pick: an index for a finite dim, a float for a range (log-uniform: exp of uniform logs)."""
        if self.kind == "uniform":
            return float(rng.uniform(self.lo, self.hi))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))
        return int(rng.integers(self.size))

    def label(self) -> str:
        return f"{self.kind}@{self.span.line}:{self.span.col}"

    def shown(self, pick: float | int) -> str:
        """The pick as it appears in a candidate and in the leaderboard."""
        if self.kind in ("uniform", "loguniform"):
            return format(pick, ".4g")
        if self.kind == "int":
            return str(int(self.lo) + int(pick))
        if self.kind == "choice":
            return self.texts[int(pick)]
        return self.texts[int(pick)][2]


@dataclass(frozen=True)
class Space:
    """A parsed search spec: its text, dimensions and budget (None where not given)."""

    text: str
    path: str
    dims: tuple[Dim, ...]
    budget: dict[str, float]
    blank: tuple[tuple[int, int], ...]  # always blanked: the budget line

    @property
    def size(self) -> int | None:
        """Number of grid points, None when a dimension is continuous."""
        sizes = [d.size for d in self.dims]
        return None if None in sizes else math.prod(sizes)

    def grid(self) -> Iterator[tuple[int, ...]]:
        """Every candidate in mixed-radix order (the last dimension varies fastest)."""
        sizes = [d.size for d in self.dims]
        for k in range(self.size or 0):
            picks = []
            for s in reversed(sizes):
                k, r = divmod(k, s)
                picks.append(r)
            yield tuple(reversed(picks))

    def sample(self, seed: int, index: int) -> tuple[float | int, ...]:
        """Candidate ``index`` of a random search: its own generator from (seed, index), so any
        subset of candidates is drawn the same whatever order they are made in."""
        rng = np.random.default_rng([seed, index])
        return tuple(d.sample(rng) for d in self.dims)

    def expand(self, picks: tuple[float | int, ...]) -> str:
        """The plain spec text of one candidate (same line numbers as the search file)."""
        chars = list(self.text)
        subs = []
        for lo, hi in self.blank:
            _blank(chars, lo, hi)
        for dim, pick in zip(self.dims, picks):
            lo, hi = _offsets(self.text, dim.span)
            if dim.kind == CHOOSE:
                keep_lo, keep_hi, label = dim.texts[int(pick)]
                if label == NONE:
                    keep_lo = keep_hi = hi
                _blank(chars, lo, keep_lo)
                _blank(chars, keep_hi, hi)
            else:
                subs.append((lo, hi, dim.shown(pick)))
        for lo, hi, new in sorted(subs, reverse=True):
            if chars[lo] == self.text[lo]:  # not inside a blanked alternative
                chars[lo:hi] = list(new)
        return "\n".join(line.rstrip() for line in "".join(chars).split("\n"))


def _blank(chars: list[str], lo: int, hi: int) -> None:
    for i in range(lo, hi):
        if chars[i] != "\n":
            chars[i] = " "


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, ch in enumerate(text) if ch == "\n")
    return starts


def _offsets(text: str, span: Span) -> tuple[int, int]:
    """Character offsets [lo, hi) of a span (1-based line/col, end column exclusive)."""
    starts = _line_starts(text)
    return starts[span.line - 1] + span.col - 1, starts[span.end_line - 1] + span.end_col - 1


# --- reading a space -----------------------------------------------------------------


class _Reader:
    """Walks the AST once, collecting dimensions and the budget, and every mistake in them."""

    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.dims: list[Dim] = []
        self.diags: list[Diagnostic] = []
        self.budget: dict[str, float] = {}
        self.blank: list[tuple[int, int]] = []

    def space(self) -> Space:
        dims = sorted(self.dims, key=lambda d: (d.span.line, d.span.col))  # the file's order
        return Space(self.text, self.path, tuple(dims), self.budget, tuple(self.blank))

    def err(self, msg: str, span: Span, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(msg, span, hint))

    def walk(self, stmts: tuple[Stmt, ...], top: bool) -> None:
        for st in stmts:
            if st.head == BUDGET:
                self._budget(st, top)
            elif st.head == CHOOSE:
                self._choose(st)
            else:
                for a in st.args:
                    self._value(a.value)
                if st.body is not None:
                    self.walk(st.body, False)

    def _value(self, v: Value) -> None:
        if v.kind == "list" and _holds_call(v.raw):
            self.err("a search value cannot sit inside a list", v.span,
                     "make the whole list a choice, like: choice([1, 28, 28], [3, 28, 28])")
        if v.kind != "call":
            return
        call: Call = v.raw
        if call.name not in FUNCTIONS:
            self.err(f"unknown search function '{call.name}'", call.name_span,
                     "known: choice(a, b, ...), uniform(lo, hi), loguniform(lo, hi), int(lo, hi)")
        elif any(a.kind == "call" or (a.kind == "list" and _holds_call(a.raw)) for a in call.args):
            self.err(f"{call.name}(...) holds plain values, not other search values", v.span,
                     "list the values instead, like: choice(0.1, 0.15, 0.2)")
        elif call.name == "choice":
            self._choice(call, v.span)
        else:
            self._range(call, v.span)

    def _choice(self, call: Call, span: Span) -> None:
        if not call.args:
            self.err("choice() needs at least one value", span, "like: choice(64, 128, 256)")
            return
        lo_hi = [_offsets(self.text, a.span) for a in call.args]
        self.dims.append(Dim("choice", span, tuple(self.text[lo:hi] for lo, hi in lo_hi)))

    def _range(self, call: Call, span: Span) -> None:
        name = call.name
        if len(call.args) != 2 or any(a.kind != "number" for a in call.args):
            self.err(f"{name}() needs two numbers, lo and hi", span, f"like: {name}({_EXAMPLES[name]})")
            return
        lo, hi = (a.raw for a in call.args)
        if name == "int" and not (isinstance(lo, int) and isinstance(hi, int)):
            self.err("int() needs whole numbers", span, "like: int(1, 4)")
        elif not (math.isfinite(lo) and math.isfinite(hi)) or (lo > hi if name == "int" else lo >= hi):
            self.err(f"{name}({lo}, {hi}): lo must be below hi", span, f"like: {name}({_EXAMPLES[name]})")
        elif name == "loguniform" and lo <= 0:
            self.err(f"loguniform needs lo > 0, found {lo}", span, "like: loguniform(1e-4, 1e-2)")
        elif name == "int" and hi - lo >= MAX_GRID:
            self.err(f"int({lo}, {hi}) has more than {MAX_GRID} values", span, "narrow the range")
        else:
            self.dims.append(Dim(name, span, (), float(lo), float(hi)))

    def _choose(self, st: Stmt) -> None:
        if st.args:
            self.err("'choose' takes no values, only a block of alternatives", st.args[0].span,
                     "write the alternatives inside the block, one per line ('none' for no statement)")
        if not st.body:
            self.err("'choose' needs a block with at least one alternative", st.head_span,
                     "write the alternatives inside the block, one per line ('none' for no statement)")
            return
        alts = []
        for alt in st.body:
            alts.append(self._alternative(alt))
        self.dims.append(Dim(CHOOSE, st.span, tuple(alts)))

    def _alternative(self, alt: Stmt) -> tuple[int, int, str]:
        """(start, end, label) of the text one alternative keeps; its own search values are read too."""
        if alt.head == NONE:
            if alt.args or alt.body is not None:
                self.err("'none' (no statement) takes no values or block", alt.span)
            return 0, 0, NONE
        if alt.head == SEQ:
            if alt.args or not alt.body:
                self.err("'seq' needs a block of statements and no values", alt.head_span,
                         "write the statements it stands for inside its block, one per line")
                return 0, 0, SEQ
            self.walk(alt.body, False)
            lo, _ = _offsets(self.text, alt.body[0].span)
            _, hi = _offsets(self.text, alt.body[-1].span)
            return lo, hi, "+".join(s.head for s in alt.body)
        self.walk((alt,), False)
        lo, hi = _offsets(self.text, alt.span)
        return lo, hi, alt.head

    def _budget(self, st: Stmt, top: bool) -> None:
        if not top or self.budget or any(d.message.startswith("'budget'") for d in self.diags):
            self.err("'budget' is written once, at the top level", st.head_span)
            return
        for a in st.args:
            if a.name not in BUDGET_OPTIONS:
                self.err("'budget' takes params=N and flops=N" if a.name is None else f"unknown budget '{a.name}'",
                         a.span, "like: budget params=1e6 flops=5e7")
            elif a.value.kind != "number" or not a.value.raw > 0:
                self.err(f"budget {a.name} must be a positive number", a.value.span)
            else:
                self.budget[a.name] = float(a.value.raw)
        if not st.args:
            self.err("'budget' needs params=N and/or flops=N", st.head_span, "like: budget params=1e6 flops=5e7")
        self.blank.append(_offsets(self.text, st.span))


_EXAMPLES = {"uniform": "0.1, 0.5", "loguniform": "1e-4, 1e-2", "int": "1, 4"}


def _holds_call(raw: list) -> bool:
    return any(isinstance(x, Call) or (isinstance(x, list) and _holds_call(x)) for x in raw)


def is_search(stmts: tuple[Stmt, ...]) -> bool:
    """Whether any search construct appears (cheap: no spans computed)."""
    for st in stmts:
        if st.head in (BUDGET, CHOOSE) or any(a.value.kind == "call" or (a.value.kind == "list"
                                              and _holds_call(a.value.raw)) for a in st.args):
            return True
        if st.body is not None and is_search(st.body):
            return True
    return False


def read(text: str, path: str = "<string>") -> Space:
    """Parse a search spec into a Space; SpecError with every mistake in its search constructs."""
    text = normalize_text(text)
    reader = _Reader(text, path)
    reader.walk(parse_ast(text, path), True)
    if reader.diags:
        raise SpecError(reader.diags, text)
    return reader.space()


def refuse_search(stmts: tuple[Stmt, ...], text: str, path: str) -> None:
    """The front end's hook: a spec with search constructs is not a plain spec.

    Raises SpecError: the constructs' own mistakes, else one diagnostic at the first
    construct saying how many candidates the space has and to run ``dnnspec search``.
    """
    if not is_search(stmts):
        return
    reader = _Reader(text, path)
    reader.walk(stmts, True)
    if reader.diags:
        raise SpecError(reader.diags, text)
    space = reader.space()
    first = min([d.span for d in space.dims] + _budget_spans(stmts), key=lambda s: (s.line, s.col))
    count = f"{space.size} candidates" if space.size is not None else "continuous ranges"
    hint = "check and train take plain specs: run this file with 'dnnspec search' (docs/search.md)"
    raise SpecError(Diagnostic(f"this is a search space ({count}), not a plain spec", first, hint), text)


def _budget_spans(stmts: tuple[Stmt, ...]) -> list[Span]:
    return [st.head_span for st in stmts if st.head == BUDGET]
