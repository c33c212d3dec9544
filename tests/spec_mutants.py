"""Mutants of the shipped specs, and the one check every mutant must pass.

Used by tests/test_fuzz.py (a few hundred mutants in CI) and bench/fuzz_specs.py (100,000).
A mutant is a seed spec edited by a few random operators: truncation, token edits and
swaps, huge / tiny / non-finite numbers, deep nesting, injected options and bytes.

:func:`run_mutant` parses a mutant; a spec that checks OK and is small is compiled to an
engine ``Net`` and run forward on a tiny random batch. It returns an :class:`Outcome`:
``error`` (a project user error: fine), ``ok`` (checked; ``forward`` says whether it ran),
or ``crash`` (any other exception, or NaN/inf outputs from a spec that checked OK).
"""

from __future__ import annotations

import random
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnnspec import frontend, memory
from dnnspec.errors import DnnspecError
from dnnspec.registry import LAYERS
from dnnspec.schema import AUGMENT, OPTIMIZER, SCHEDULE, STATEMENTS

ROOT = Path(__file__).resolve().parent.parent

# Seeds: the shipped specs, and a few more that write the options the shipped ones leave out.
EXTRA_SEEDS = (
    "input [3]\ntargets 2\nlayers {\n  dense 4 init=normal std=0.2\n  softplus\n  dense 4 init=uniform "
    "limit=0.3 bias=false\n  tanh\n  dense 4 init=lecun_uniform\n  dense 2 init=zeros\n}\n"
    "optimizer adam weight_decay=0.01 decay_mode=decoupled clip_norm=1\nschedule step every=3\n",
    "input image[2, 9, 7] scale=0.5\nnormalize mean=[0.1, 0.2] std=0.5\nclasses 2\naugment {\n  crop 2\n"
    "  translate 10%\n  rotate 7.5\n  scale 0.9..1.1\n  erase p=1 area=0.1..0.3 value=0.5\n}\n"
    "layers {\n  conv2d 3 kernel=[3, 2] stride=[2, 1] padding=[1, 0]\n  avgpool 2 stride=1 padding=1\n"
    "  maxpool [2, 1]\n  leaky_relu alpha=0.2 learn=true per=channel\n  flatten\n  dense 2\n  softmax\n}\n",
    'input [2]\nclasses "a b", "true", "x\\"y"\nlayers {\n  repeat 2 {\n    dense 3 name=h\n    elu alpha=2\n'
    "    dropout 0.5\n  }\n  dense 3\n  softmax\n}\ntrain epochs=1 batch=4\n",
)
SEEDS = tuple(p.read_text() for p in sorted((ROOT / "specs").glob("*.dnn"))) + EXTRA_SEEDS

TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_][\w-]*|[+-]?\d[\w.%+-]*|\S|\n')
NUMBER = re.compile(r"[+-]?\d")
PUNCT = ("{", "}", "[", "]", "=", ",", "..", "/", "\n", "#", '"', ":", "(", "-")
WORDS = (*LAYERS, *AUGMENT, *OPTIMIZER, *SCHEDULE, *STATEMENTS, "repeat", "residual", "shortcut", "input", "layers",
         "classes", "targets", "loss", "optimizer", "schedule", "image", "auto", "none", "true", "false", "same",
         "valid", "inf", "nan")
OPTION_NAMES = sorted({o.name for table in (LAYERS, AUGMENT, OPTIMIZER, SCHEDULE, STATEMENTS)
                       for s in table.values() for o in s.options} | {"from"})
# Numbers at and beyond every edge: huge ints (also past Python's 4300-digit int parsing
# limit), overflowing floats, denormals, zero, signs, non-finite names, unit and range forms.
NASTY_NUMBERS = (
    "0", "-0", "1", "-1", "2", "3", "7", "0.5", "0.999999", "1e-8", "1e-30", "1e-45", "1e-320", "5e-324", "1e38",
    "3.5e38", "1e300", "1e400", "-1e400", "65536", "2147483648", "4294967296", "9223372036854775808",
    "99999999999999999999999", "1" + "0" * 400, "9" * 5000, "1/0", "0/0", "-1/0", "1/3", "1" + "0" * 400 + "/3",
    "1e400/1e-400", "0..0", "1..1e400", "-1e400..1", "2..1", "1e3px", "0px", "99999999999px", "4097px", "100%",
    "99.9%", "1e400%", "360deg", "1e400deg", "nan", "inf", "-inf", "NaN",
)


def _nasty_number(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return str(rng.choice([rng.randint(-10, 10**6), 10 ** rng.randint(0, 40),
                               rng.random() * 10 ** rng.randint(-40, 40)]))
    return rng.choice(NASTY_NUMBERS)


def truncate(text: str, rng: random.Random) -> str:
    return text[:rng.randrange(len(text) + 1)]


def _tokens_op(text: str, rng: random.Random) -> str:
    tokens = TOKEN.findall(text)
    if not tokens:
        return text
    i = rng.randrange(len(tokens))
    op = rng.randrange(6)
    if op == 0:
        del tokens[i]
    elif op == 1:
        tokens.insert(i, tokens[i])
    elif op == 2:
        j = rng.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    elif op == 3:
        tokens.insert(i, rng.choice(PUNCT))
    elif op == 4:
        tokens[i] = rng.choice(WORDS)
    else:
        tokens.insert(i, rng.choice(WORDS))
    return " ".join(tokens)


def token_edit(text: str, rng: random.Random) -> str:
    """Delete, duplicate, swap, insert or replace one token (punctuation, a keyword, a name)."""
    return _tokens_op(text, rng)


def number_edit(text: str, rng: random.Random) -> str:
    """Replace one number of the spec (or any token, if none) by a huge, tiny or non-finite one."""
    tokens = TOKEN.findall(text)
    nums = [i for i, t in enumerate(tokens) if NUMBER.match(t)] or list(range(len(tokens)))
    if not nums:
        return text
    tokens[rng.choice(nums)] = _nasty_number(rng)
    return " ".join(tokens)


def option_inject(text: str, rng: random.Random) -> str:
    """Append ``name=value`` (any option name of the schema, a nasty or plain value) to one line."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    value = _nasty_number(rng) if rng.random() < 0.7 else rng.choice(WORDS)
    lines[i] += f" {rng.choice(OPTION_NAMES)}={value}"
    return "\n".join(lines)


def _edges(typ) -> list[str]:
    """Values at the edges of an option type's range, written in .dnn syntax (valid ones mostly)."""
    from dnnspec import schema as sc

    if isinstance(typ, sc.Int):
        return [str(v) for v in (typ.lo, typ.hi) if v is not None] or ["1"]
    if isinstance(typ, sc.Float):
        lo = typ.lo if typ.lo is not None else -1e6
        hi = typ.hi if typ.hi is not None else 1e6
        lo = lo * (1 + 1e-6) + (1e-12 if typ.lo_open else 0)
        hi = hi * (1 - 1e-6) if typ.hi_open else hi
        return [repr(lo), repr(hi)]
    if isinstance(typ, sc.Pair):
        hi = getattr(typ, "hi", None) or 4096
        return [str(typ.lo), str(hi), f"[{typ.lo}, {hi}]"]
    if isinstance(typ, sc.Padding):
        return ["same", "valid", "0", "4096"]
    if isinstance(typ, sc.FloatRange):
        return [f"{typ.lo}..{typ.hi}", f"{typ.lo}..{typ.lo}", f"{typ.hi}..{typ.hi}"]
    if isinstance(typ, sc.FloatList):
        item = getattr(typ, "item", sc.Float(1e-6, 1e6))
        return _edges(item) + [f"[{', '.join(_edges(item))}]"]
    if isinstance(typ, sc.Length):
        return ["0px", f"{getattr(typ, 'max_px', 4096)}px", "0.999999", "99%"]
    if isinstance(typ, sc.Angle):
        return ["0", "180deg"]
    if isinstance(typ, sc.Choice):
        return list(typ.values)
    if isinstance(typ, sc.Bool):
        return ["true", "false"]
    return ["x"]


def _line_schema(line: str):
    words = re.findall(r"[A-Za-z_][\w-]*", line)
    if not words:
        return None
    head, kind = words[0], words[1] if len(words) > 1 else ""
    tables = {"optimizer": OPTIMIZER, "schedule": SCHEDULE}
    if head in tables:
        return tables[head].get(kind)
    return LAYERS.get(head) or AUGMENT.get(head) or STATEMENTS.get(head)


def edge_value(text: str, rng: random.Random) -> str:
    """Set one option of one statement to a value at the edge of its schema range (mostly still valid)."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if _line_schema(line) is not None]
    if not candidates:
        return text
    i = rng.choice(candidates)
    schema = _line_schema(lines[i])
    opts = [o for o in schema.options if o.name != "name"]
    if not opts:
        return text
    opt = rng.choice(opts)
    value = rng.choice(_edges(opt.type))
    line = re.sub(rf"\b{opt.name}=\S+", "", lines[i].split("#")[0])
    lines[i] = f"{line} {opt.name}={value}"
    return "\n".join(lines)


def deep_nesting(text: str, rng: random.Random) -> str:
    """Insert many nested ``repeat N {`` blocks or ``[`` brackets (closed or not) somewhere."""
    depth = rng.choice([2, 5, 31, 32, 33, 100, 600, 5000])
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    if rng.random() < 0.5:
        count = rng.choice(["1", "2", "10", "1000"])
        opened = "\n".join(f"repeat {count} {{" for _ in range(depth))
        closed = "\n".join("}" for _ in range(depth if rng.random() < 0.8 else depth // 2))
        lines[i:i + 1] = [opened, lines[i], closed]
    else:
        inner = rng.choice(["2", "", "x", "1e400"])
        lines[i] += " " + "[" * depth + inner + "]" * (depth if rng.random() < 0.8 else 0)
    return "\n".join(lines)


def line_edit(text: str, rng: random.Random) -> str:
    """Delete, duplicate or move one line."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    op = rng.randrange(3)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[i])
    else:
        lines.insert(rng.randrange(len(lines) + 1), lines.pop(i))
    return "\n".join(lines)


def byte_edit(text: str, rng: random.Random) -> str:
    """Insert an odd character: control, BOM, CR, NUL, a non-ASCII letter, a tab."""
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(["\x00", "\x07", "\ufeff", "\r", "\t", "é", "\u2028", "\\", "'", ";"]) + text[i:]


MUTATORS = (truncate, token_edit, token_edit, number_edit, number_edit, option_inject, edge_value, edge_value,
            edge_value, deep_nesting, line_edit, byte_edit)


def mutant(rng: random.Random) -> str:
    """A seed spec with 1 to 4 random mutations."""
    text = rng.choice(SEEDS)
    for _ in range(rng.randint(1, 4)):
        text = rng.choice(MUTATORS)(text, rng)
        if not text:
            break
    return text


@dataclass
class Outcome:
    """``kind``: error (a user error), ok, or crash; ``forward``: the net ran; ``detail``: the crash."""

    kind: str
    forward: bool = False
    detail: str = ""


FORWARD_BYTES = 16 * 2**20  # run the net forward only when one pass at batch 4 needs less than this
FORWARD_LAYERS = 300


def forward_is_finite(model, batch: int = 4, seed: int = 0) -> bool:
    """Build the engine Net; run it forward in evaluation and in training mode (dropout, batch
    statistics) on raw inputs that ``scale`` maps to [0, 1). True if every output is finite."""
    from dnnspec.engine.net import Net

    net = Net(model, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *model.input.shape)) / model.input.scale
    with np.errstate(all="ignore"):
        outs = (net.forward(x), net.forward(x, training=True, rng=rng))
    return all(bool(np.isfinite(out).all()) for out in outs)


def run_mutant(text: str, forward: bool = True) -> Outcome:
    """Parse (and maybe run) one mutant; see the module doc for the outcomes."""
    try:
        model = frontend.parse(text, "mutant.dnn")
    except DnnspecError as e:
        if not str(e) or (hasattr(e, "render") and not e.render()):
            return Outcome("crash", detail=f"{type(e).__name__} with an empty message")
        return Outcome("error")
    except Exception:  # noqa: BLE001 - a crash is exactly what we look for
        return Outcome("crash", detail=traceback.format_exc(limit=-4))
    small = len(model.layers) <= FORWARD_LAYERS and memory.forward_bytes(model, 4) < FORWARD_BYTES
    if not (forward and small):
        return Outcome("ok")
    try:
        if not forward_is_finite(model):
            return Outcome("crash", True, "NaN or inf in the outputs of a spec that checks OK")
    except DnnspecError:
        return Outcome("error", True)
    except Exception:  # noqa: BLE001
        return Outcome("crash", True, traceback.format_exc(limit=-4))
    return Outcome("ok", True)
