"""How the layers of a ``layers`` block are wired: references between layers and what they may name.

A layer reads the line above it unless it says otherwise: ``from=NAME`` (any layer),
the names of ``add a, b`` and ``concat a, b``, and the blocks ``residual { ... }`` (its
body reads the block's input; its ``shortcut { ... }`` too; an ``add`` of the two, or of
the body and the input, closes it). The front end expands blocks into a flat list of
layers whose references are :class:`Ref`: a name as written, or a structural link to the
item ``back`` places earlier (a block's input). Offsets survive ``repeat`` (which copies
whole ranges) and concatenation; :func:`enter` re-aims the links that leave a block when
its items are placed after others (a shortcut after the body). :func:`resolve` turns the
references into layer names once the default names (``dense1``) are known.

Nothing here knows a layer kind: the messages and hints are about names and shapes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import NO_SPAN, Span
from .ir import INPUT
from .shapes import Shape, fmt_shape

Report = Callable[[str, Span, str | None], None]


@dataclass(frozen=True)
class Ref:
    """What a layer reads: the layer ``name`` written in the spec, or (``name`` None) the item ``back``
    places before it in the expanded list; before the first item, the model's input."""

    name: str | None
    back: int = 1
    span: Span = NO_SPAN


Refs = tuple[Ref, ...]  # empty: the line above


def enter(refs: Sequence[Refs], offset: int, start: Ref | None) -> list[Refs]:
    """The references of a block's items once placed ``offset`` items after the block's input.

    A reference that reaches before the items (an empty one on the first item, or a link
    ``back`` > its index) means the block's input: it then points ``offset`` items further
    back, or at ``start`` (a ``from=NAME`` on the block). Others stay.
    """
    if offset == 0 and start is None:
        return list(refs)
    out = []
    for j, own in enumerate(refs):
        own = own or ((Ref(None, 1),) if j == 0 else ())
        out.append(tuple((start or Ref(None, r.back + offset, r.span)) if r.name is None and r.back > j else r
                         for r in own))
    return out


def suffixed(refs: Refs, declared: set[str], suffix: str) -> Refs:
    """A ``repeat`` copy's references: names declared inside the repeated block get the copy's suffix."""
    if not any(r.name in declared for r in refs):
        return refs
    return tuple(Ref(r.name + suffix, r.back, r.span) if r.name in declared else r for r in refs)


def resolve(refs: Sequence[Refs], names: Sequence[str], spans: Sequence[Span],
            report: Report) -> list[tuple[tuple[str, ...], tuple[Span, ...]] | None]:
    """Each item's input names and the spans they were written at, or None where one is wrong.

    ``names``: every item's layer name, in order; ``spans``: where each item was written
    (for a link without a span of its own). A written name must be ``input`` or an
    earlier layer's: a later, unknown or own name is reported once per place (``repeat``
    copies the same text).
    """
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        first.setdefault(name, i)
    seen: set[tuple[Span, str]] = set()
    out: list[tuple[tuple[str, ...], tuple[Span, ...]] | None] = []
    for i, own in enumerate(refs):
        got, where, ok = [], [], True
        for r in own or (Ref(None, 1),):
            span = r.span if r.span != NO_SPAN else spans[i]
            name = _target(r, i, names, first, names[i], span, seen, report)
            ok = ok and name is not None
            got.append(name or "")
            where.append(span)
        out.append((tuple(got), tuple(where)) if ok else None)
    return out


def _target(r: Ref, i: int, names: Sequence[str], first: dict[str, int], own: str, span: Span,
            seen: set[tuple[Span, str]], report: Report) -> str | None:
    """The name ``r`` points at from item ``i``, or None after reporting why it cannot."""
    if r.name is None:
        return names[i - r.back] if i - r.back >= 0 else INPUT
    if r.name == INPUT:
        return INPUT
    j = first.get(r.name)
    if j is not None and j < i:
        return r.name
    if (span, r.name) not in seen:
        seen.add((span, r.name))
        if j == i:
            report(f"layer '{own}' cannot read its own output", span,
                   "name an earlier layer, or 'input' for the network's input")
        elif j is not None:
            report(f"layer '{r.name}' comes later: '{own}' can only read layers above it", span,
                   f"move '{own}' below '{r.name}', or read an earlier layer")
        else:
            report(f"no layer named '{r.name}' above this line", span, _did_you_mean(r.name, [INPUT, *names[:i]]))
    return None


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    shown = known if len(known) <= 6 else [known[0], "...", *known[-5:]]
    return "it can read: " + ", ".join(shown)


def unused(names: Sequence[str], inputs: Sequence[tuple[str, ...]]) -> list[int]:
    """Indices of the layers (all but the last) whose output no later layer reads."""
    read = {name for own in inputs for name in own}
    return [i for i, name in enumerate(names[:-1]) if name not in read]


def projection(x: Shape, y: Shape) -> str | None:
    """The ``shortcut { ... }`` that brings the block's input ``x`` to the body's output ``y``, or None."""
    if len(x) == 1 and len(y) == 1:
        return f"shortcut {{ dense {y[0]} }}"
    if len(x) != 3 or len(y) != 3:
        return None
    (_, h, w), (c, oh, ow) = x, y
    sh, sw = -(-h // oh), -(-w // ow)
    if (h - 1) // sh + 1 != oh or (w - 1) // sw + 1 != ow:
        return None
    stride = "" if (sh, sw) == (1, 1) else f" stride={sh}" if sh == sw else f" stride=[{sh}, {sw}]"
    return f"shortcut {{ conv2d {c} kernel=1{stride} }}"


def residual_mismatch(body: Shape, other: Shape, source: str, shortcut: bool) -> tuple[str, str]:
    """(message, hint) for a residual block whose body and input (or shortcut) differ in shape."""
    what = "its shortcut ends with" if shortcut else f"its input '{source}' has"
    message = (f"residual block: the body ends with shape {fmt_shape(body)} but {what} shape "
               f"{fmt_shape(other)}; y = body(x) + x needs one shape")
    if shortcut:
        return message, f"make the shortcut end with {fmt_shape(body)}, or the body with {fmt_shape(other)}"
    fix = projection(other, body)
    if fix is None:
        return message, ("keep the body's output the kind and size of its input, or give the block a "
                         "shortcut { ... } that maps the input to the body's output")
    return message, f"give the block a projection as its last statement: {fix} (batchnorm inside as in the body)"


__all__ = ["Ref", "Refs", "enter", "projection", "residual_mismatch", "resolve", "suffixed", "unused"]
