"""The option schema of the .dnn language: the option types, and every statement and augmentation op.

The grammar only knows generic ``name=value`` pairs and positional values; these tables
say which options exist, their types, defaults and valid ranges. The front end checks
parsed values against them (``Schema.bind``), ``docs/language.md`` documents them, and
``dnnspec check --render`` prints specs back from them. One place, one truth. The layer
kinds' schemas are part of their entries in :mod:`dnnspec.registry` (``registry.LAYERS``),
written with the types defined here.

Raw values, as the parser hands them over, are plain Python values:
``int``, ``float`` (``1/255`` is already divided), ``bool`` (``true``/``false``),
``str`` (identifiers and quoted strings), :class:`Quantity` (``2px``, ``10deg``,
``10%``), :class:`Range` (``0.9..1.1``) and ``list`` (``[1, 28, 28]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Quantity:
    """A number with a unit: ``2px``, ``10deg``, ``10%``."""

    value: float
    unit: str


@dataclass(frozen=True)
class Range:
    """A closed interval written ``lo..hi``."""

    lo: float
    hi: float


class OptionError(ValueError):
    """A raw value that does not fit its option's type or range."""


REQUIRED = object()

# Size limits, so that what `check` accepts `train` can run: each number stays small enough
# for its products to be modest ints and for float32 to hold it finite and normal; the
# memory estimate (dnnspec.memory) then bounds the network as a whole.
MAX_WIDTH = 1_000_000  # dense units, conv filters, classes, targets, each input size
MAX_WINDOW = 4096  # conv/pool kernel, stride and padding; crop and translate pixels
MAX_COUNT = 1_000_000  # epochs, batch and the recipe's other counts


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def to_float(v: int | float) -> float:
    """``float(v)``, but +-inf for an int too large for a float (instead of OverflowError)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def describe_value(v: Any) -> str:
    """A raw value as a message shows it: the .dnn spelling, and no screenful of digits."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**30:
        return f"a {len(str(abs(v)))}-digit number"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Quantity):
        number = describe_value(v.value) if isinstance(v.value, int) else f"{v.value:g}"
        return f"{number}{v.unit}" if not number.startswith("a ") else f"{number} of {v.unit}"
    if isinstance(v, Range):
        return f"{v.lo:g}..{v.hi:g}"
    if isinstance(v, str):
        return repr(v)
    return str(v)


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None

    def convert(self, v: Any) -> int:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise OptionError(f"expected a whole number, found {describe_value(v)}")
        v = int(v)
        if self.lo is not None and v < self.lo:
            raise OptionError(f"must be at least {self.lo}, found {describe_value(v)}")
        if self.hi is not None and v > self.hi:
            raise OptionError(f"must be at most {self.hi:,}, found {describe_value(v)}")
        return v

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"integer in [{self.lo}, {self.hi:,}]"
        if self.lo is not None:
            return f"integer >= {self.lo}"
        return "integer"


@dataclass(frozen=True)
class Float:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def convert(self, v: Any) -> float:
        if not _num(v):
            raise OptionError(f"expected a number, found {describe_value(v)}")
        f = to_float(v)
        if not math.isfinite(f):
            raise OptionError(f"expected a finite number, found {describe_value(v)}")
        v = f
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise OptionError(f"must be in {self.describe_range()}, found {v:g}")
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            raise OptionError(f"must be in {self.describe_range()}, found {v:g}")
        return v

    def describe_range(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        left = "(" if self.lo is None or self.lo_open else "["
        right = ")" if self.hi is None or self.hi_open else "]"
        return f"{left}{lo}, {hi}{right}"

    def describe(self) -> str:
        return "number" if self.lo is None and self.hi is None else f"number in {self.describe_range()}"


@dataclass(frozen=True)
class Bool:
    def convert(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise OptionError(f"expected true or false, found {describe_value(v)}")
        return v

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]

    def convert(self, v: Any) -> str:
        if not isinstance(v, str) or v not in self.values:
            raise OptionError(f"expected one of {', '.join(self.values)}; found {describe_value(v)}")
        return v

    def describe(self) -> str:
        return " | ".join(self.values)


@dataclass(frozen=True)
class Text:
    def convert(self, v: Any) -> str:
        if not isinstance(v, str):
            raise OptionError(f"expected a name or a quoted string, found {describe_value(v)}")
        return v

    def describe(self) -> str:
        return "name or quoted string"


@dataclass(frozen=True)
class Pair:
    """One int in [lo, hi] for both sides, or ``[h, w]``; stored as ``(h, w)``."""

    lo: int = 1
    hi: int | None = None

    def convert(self, v: Any) -> tuple[int, int]:
        items = v if isinstance(v, list) else [v, v]
        if len(items) != 2:
            raise OptionError(f"expected a number or [height, width], found {len(items)} values")
        inner = Int(self.lo, self.hi)
        return (inner.convert(items[0]), inner.convert(items[1]))

    def describe(self) -> str:
        return f"{Int(self.lo, self.hi).describe()}, or [h, w]"


@dataclass(frozen=True)
class Padding:
    """``same``, ``valid`` or a non-negative pixel count (or ``[h, w]``)."""

    def convert(self, v: Any) -> str | tuple[int, int]:
        if v in ("same", "valid"):
            return v
        if isinstance(v, str):
            raise OptionError(f"expected same, valid or a number of pixels; found {describe_value(v)}")
        return Pair(0, MAX_WINDOW).convert(v)

    def describe(self) -> str:
        return f"same | valid | pixels in [0, {MAX_WINDOW:,}] | [h, w]"


@dataclass(frozen=True)
class FloatRange:
    """``lo..hi`` within bounds; a single number ``x`` means ``x..x``."""

    lo: float | None = None
    hi: float | None = None

    def convert(self, v: Any) -> tuple[float, float]:
        if _num(v):
            v = Range(to_float(v), to_float(v))
        if not isinstance(v, Range):
            raise OptionError(f"expected a range lo..hi, found {describe_value(v)}")
        if v.lo > v.hi:
            raise OptionError(f"range {describe_value(v)} is empty: write the smaller bound first")
        for x in (v.lo, v.hi):
            if (self.lo is not None and x < self.lo) or (self.hi is not None and x > self.hi):
                raise OptionError(f"bounds must lie in [{self.lo:g}, {self.hi:g}], found {describe_value(v)}")
        return (float(v.lo), float(v.hi))

    def describe(self) -> str:
        return f"range lo..hi within [{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True)
class Length:
    """A shift: ``2px`` (pixels, at most ``max_px``), ``0.1`` or ``10%`` (fraction of the side).

    Stored ``(amount, unit)``; ``unit`` is ``"px"`` or ``"frac"``.
    """

    max_px: int = 4096

    def convert(self, v: Any) -> tuple[float, str]:
        if isinstance(v, Quantity) and v.unit == "px" and 0 <= v.value <= self.max_px:
            return (float(v.value), "px")
        if isinstance(v, Quantity) and v.unit == "%" and 0 <= v.value < 100:
            return (float(v.value) / 100.0, "frac")
        if _num(v) and 0 <= v < 1:
            return (float(v), "frac")
        raise OptionError(f"expected pixels in [0, {self.max_px:,}] (2px) or a fraction of the side "
                          f"(0.1 or 10%), found {describe_value(v)}")

    def describe(self) -> str:
        return f"pixels in [0, {self.max_px:,}] like 2px, or a fraction in [0, 1) like 0.1 or 10%"


@dataclass(frozen=True)
class Angle:
    """Degrees, written ``10deg`` or ``10``; stored as a float in [0, 180]."""

    def convert(self, v: Any) -> float:
        if isinstance(v, Quantity) and v.unit == "deg":
            v = v.value
        if not _num(v) or not 0 <= v <= 180:
            raise OptionError(f"expected an angle in degrees between 0 and 180 (10deg), found {describe_value(v)}")
        return float(v)

    def describe(self) -> str:
        return "degrees in [0, 180], like 10deg"


@dataclass(frozen=True)
class FloatList:
    """One number, or ``[a, b, ...]`` (per channel / per feature), each of type ``item``; stored as a tuple."""

    item: Float = Float()

    def convert(self, v: Any) -> tuple[float, ...]:
        items = v if isinstance(v, list) else [v]
        out = tuple(self.item.convert(x) for x in items)
        if not out:
            raise OptionError("expected at least one number")
        return out

    def describe(self) -> str:
        return "number or [numbers]" + (f" in {self.item.describe_range()}" if self.item.describe() != "number"
                                        else "")


@dataclass(frozen=True)
class Opt:
    """One option: its type, its default (``REQUIRED`` if it has none) and a one-line doc."""

    name: str
    type: Any
    default: Any = REQUIRED
    doc: str = ""


@dataclass(frozen=True)
class Schema:
    """The options of one statement, layer or augmentation op, in positional order first."""

    name: str
    options: tuple[Opt, ...] = ()
    positional: tuple[str, ...] = ()
    doc: str = ""
    example: str = ""
    by_name: dict[str, Opt] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name.update({o.name: o for o in self.options})

    def bind(self, positional: list[Any], named: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """Check raw values; return (every option with defaults filled, names written explicitly).

        Raises OptionError (with ``.option`` set) at the first bad value; the front end
        calls :meth:`bind_one` per option to report them all.
        """
        values: dict[str, Any] = {}
        if len(positional) > len(self.positional):
            err = OptionError(f"'{self.name}' takes at most {len(self.positional)} value(s) without a name, "
                              f"found {len(positional)}")
            err.option = None  # type: ignore[attr-defined]
            raise err
        for opt_name, raw in zip(self.positional, positional):
            values[opt_name] = self.bind_one(opt_name, raw)
        for opt_name, raw in named.items():
            values[opt_name] = self.bind_one(opt_name, raw)
        explicit = set(values)
        for o in self.options:
            if o.name not in values:
                if o.default is REQUIRED:
                    err = OptionError(f"'{self.name}' needs a value for '{o.name}'")
                    err.option = o.name  # type: ignore[attr-defined]
                    raise err
                values[o.name] = o.default
        return values, explicit

    def bind_one(self, opt_name: str, raw: Any) -> Any:
        opt = self.by_name.get(opt_name)
        if opt is None:
            err = OptionError(f"'{self.name}' has no option '{opt_name}'")
            err.option = opt_name  # type: ignore[attr-defined]
            raise err
        try:
            return opt.type.convert(raw)
        except OptionError as e:
            err = OptionError(f"{self.name} {opt_name}: {e}")
            err.option = opt_name  # type: ignore[attr-defined]
            raise err from None


# --- augmentation ops ----------------------------------------------------------------

AUGMENT: dict[str, Schema] = {s.name: s for s in (
    Schema("flip", (Opt("direction", Choice(("horizontal", "vertical")), "horizontal"),
                    Opt("p", Float(0.0, 1.0), 0.5, "probability of flipping an image")),
           positional=("direction",), doc="mirror images", example="flip horizontal p=0.5"),
    Schema("translate", (Opt("amount", Length(MAX_WINDOW)),),
           positional=("amount",), doc="shift by up to amount in x and y (uniform); pixels at most the image's "
                                       "longer side",
           example="translate 2px"),
    Schema("rotate", (Opt("degrees", Angle()),),
           positional=("degrees",), doc="rotate by an angle uniform in [-degrees, degrees]",
           example="rotate 10deg"),
    Schema("scale", (Opt("range", FloatRange(0.1, 10.0)),),
           positional=("range",), doc="zoom by a factor uniform in the range", example="scale 0.9..1.1"),
    Schema("contrast", (Opt("range", FloatRange(0.0, 10.0)),),
           positional=("range",), doc="scale deviations from each image's mean by a factor in the range",
           example="contrast 0.8..1.2"),
    Schema("brightness", (Opt("delta", Float(0.0, 1.0)),),
           positional=("delta",),
           doc="add an offset uniform in [-delta, delta] times the input's value range",
           example="brightness 0.1"),
    Schema("crop", (Opt("padding", Int(0, MAX_WINDOW), 4,
                        "zero-pad each side, then crop back to the input size; at most the image's longer side"),),
           positional=("padding",), doc="random crop with padding", example="crop 4"),
    Schema("erase", (Opt("p", Float(0.0, 1.0), 0.5, "probability per image"),
                     Opt("area", FloatRange(0.0, 1.0), (0.02, 0.25), "fraction of the image erased"),
                     Opt("value", Float(-1e6, 1e6), 0.0, "fill value (raw input units)")),
           doc="random erasing (cutout) of one rectangle", example="erase p=0.5 area=0.02..0.25"),
    Schema("cutmix", (Opt("alpha", Float(0.0, 100.0, lo_open=True), 1.0,
                          "lam ~ Beta(alpha, alpha); the box covers about 1 - lam of the image"),
                      Opt("p", Float(0.0, 1.0), 0.5, "probability that a batch is cut-mixed")),
           doc="paste a box of a shuffled copy of the batch into each image; the loss weights the two labels "
               "by their areas (classification losses only; image input)",
           example="cutmix alpha=1.0 p=0.5"),
    Schema("mixup", (Opt("alpha", Float(0.0, 100.0, lo_open=True), 0.2, "lam ~ Beta(alpha, alpha)"),
                     Opt("p", Float(0.0, 1.0), 1.0, "probability that a batch is mixed (when cutmix is not applied)")),
           doc="x <- lam x + (1-lam) x[perm] with a shuffled copy of the batch; the loss mixes the labels alike "
               "(classification losses only; vector or image input)",
           example="mixup alpha=0.2 p=1.0"),
)}

# Ops that mix pairs of examples and so their labels too (dnnspec.augment.Mixer): they run on the whole
# batch after the per-image ops, at most one of them per batch, and only with these losses.
MIX_OPS = ("cutmix", "mixup")
MIX_LOSSES = ("cross_entropy", "binary_cross_entropy")

# Order in which ops run on a batch, whatever order the spec writes them in.
AUGMENT_ORDER = ("crop", "flip", "translate", "rotate", "scale", "contrast", "brightness", "erase", *MIX_OPS)

# --- top-level statements --------------------------------------------------------

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam")
SCHEDULES = ("constant", "step", "exponential", "cosine")

_OPT_COMMON = (
    Opt("weight_decay", Float(0.0, None), 0.0, "weight decay coefficient (kernels only, not biases/BN)"),
    Opt("decay_mode", Choice(("l2", "decoupled")), "l2",
        "l2: add wd*w to the gradient; decoupled: w -= lr*wd*w after the step (AdamW)"),
    Opt("clip_norm", Float(0.0, None), 0.0, "clip gradients to this global L2 norm; 0 = off"),
)

OPTIMIZER: dict[str, Schema] = {s.name: s for s in (
    Schema("sgd", (Opt("lr", Float(0.0, None, lo_open=True), 0.01, "learning rate eta"),
                   Opt("momentum", Float(0.0, 1.0, hi_open=True), 0.0, "momentum coefficient"),
                   Opt("nesterov", Bool(), False, "Nesterov momentum"), *_OPT_COMMON),
           doc="w <- w - lr*grad (with momentum: v <- momentum*v + grad; w <- w - lr*v)",
           example="optimizer sgd lr=0.1 momentum=0.9 nesterov=true"),
    Schema("adagrad", (Opt("lr", Float(0.0, None, lo_open=True), 0.01, "learning rate eta"),
                       Opt("eps", Float(0.0, None, lo_open=True), 1e-10, "inside the square root"),
                       *_OPT_COMMON),
           doc="s <- s + g*g; w <- w - lr*g/sqrt(s+eps)", example="optimizer adagrad lr=0.01"),
    Schema("rmsprop", (Opt("lr", Float(0.0, None, lo_open=True), 0.001, "learning rate eta"),
                       Opt("beta", Float(0.0, 1.0, hi_open=True), 0.9, "decay rate of s"),
                       Opt("eps", Float(0.0, None, lo_open=True), 1e-10, "inside the square root"),
                       *_OPT_COMMON),
           doc="s <- beta*s + (1-beta)*g*g; w <- w - lr*g/sqrt(s+eps)",
           example="optimizer rmsprop lr=0.001 beta=0.9"),
    Schema("adam", (Opt("lr", Float(0.0, None, lo_open=True), 0.001, "learning rate eta"),
                    Opt("beta1", Float(0.0, 1.0, hi_open=True), 0.9, "decay of the first moment"),
                    Opt("beta2", Float(0.0, 1.0, hi_open=True), 0.999, "decay of the second moment"),
                    Opt("eps", Float(0.0, None, lo_open=True), 1e-8, "inside the square root"),
                    Opt("amsgrad", Bool(), False, "AMSGrad: divide by sqrt of the running maximum of s_hat"),
                    *_OPT_COMMON),
           doc="m <- b1*m + (1-b1)*g; s <- b2*s + (1-b2)*g*g; m_hat = m/(1-b1^t); "
               "s_hat = s/(1-b2^t); w <- w - lr*m_hat/sqrt(s_hat+eps)",
           example="optimizer adam lr=1e-3 beta1=0.9 beta2=0.999 eps=1e-8"),
)}

_WARMUP = Opt("warmup", Float(0.0, None), 0.0, "epochs of linear warm-up from 0 to lr (per step)")
SCHEDULE: dict[str, Schema] = {s.name: s for s in (
    Schema("constant", (_WARMUP,), doc="lr stays fixed", example="schedule constant"),
    Schema("step", (Opt("every", Int(1, MAX_COUNT), 10, "epochs between drops"),
                    Opt("gamma", Float(0.0, 1.0, lo_open=True), 0.1, "factor per drop"), _WARMUP),
           doc="lr * gamma^floor(epoch/every)", example="schedule step every=10 gamma=0.1"),
    Schema("exponential", (Opt("gamma", Float(0.0, 1.0, lo_open=True), 0.95, "factor per epoch"), _WARMUP),
           doc="lr * gamma^epoch (continuous, per step)", example="schedule exponential gamma=0.95"),
    Schema("cosine", (Opt("min_lr", Float(0.0, None), 0.0, "lr at the end"), _WARMUP),
           doc="min_lr + (lr-min_lr)*(1+cos(pi*progress))/2 over the epochs after warm-up",
           example="schedule cosine warmup=1"),
)}

LOSS: dict[str, Schema] = {s.name: s for s in (
    Schema("cross_entropy", (Opt("label_smoothing", Float(0.0, 1.0, hi_open=True), 0.0,
                                 "target (1-e)*onehot + e/K instead of onehot"),),
           doc="softmax cross-entropy; the spec ends with softmax", example="loss cross_entropy"),
    Schema("binary_cross_entropy", doc="binary cross-entropy; the spec ends with sigmoid",
           example="loss binary_cross_entropy"),
    Schema("mse", doc="mean squared error; for regression", example="loss mse"),
)}

STATEMENTS: dict[str, Schema] = {s.name: s for s in (
    Schema("input", (Opt("scale", Float(1e-6, 1e6), 1.0,
                         "raw inputs are multiplied by this inside the model, e.g. 1/255"),),
           doc=f"input shape: [features] or image[C, H, W], each size in [1, {MAX_WIDTH:,}]",
           example="input image[1, 28, 28] scale=1/255"),
    Schema("normalize", (Opt("mode", Choice(("auto", "none")), None,
                             "auto: mean and std of the training split; none: no normalisation"),
                         Opt("mean", FloatList(Float(-1e6, 1e6)), None,
                             "subtracted after scale: one value, or one per channel / feature"),
                         Opt("std", FloatList(Float(1e-6, 1e6)), None,
                             "divided by after the mean: one value, or one per channel / feature")),
           positional=("mode",), doc="input normalisation (x*scale - mean) / std; mode, or mean= and std=",
           example="normalize mean=[0.49, 0.48, 0.45] std=[0.25, 0.24, 0.26]"),
    Schema("train", (Opt("epochs", Int(1, MAX_COUNT), 10, "passes over the training data"),
                     Opt("batch", Int(1, MAX_COUNT), 32, "mini-batch size"),
                     Opt("validation", Float(0.0, 1.0, hi_open=True), 0.1,
                         "fraction of the training data held out for validation"),
                     Opt("seed", Int(0, 2**32 - 1), 0, "seed of the one random generator"),
                     Opt("early_stop", Int(0, MAX_COUNT), 0, "patience in epochs on validation loss; 0 = off"),
                     Opt("checkpoint_every", Int(0, MAX_COUNT), 1, "epochs between checkpoints; 0 = only at the end")),
           doc="the training recipe", example="train epochs=15 batch=128 validation=0.1 seed=7 early_stop=3"),
)}
