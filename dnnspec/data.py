"""Data sources: a source name or path -> :class:`Dataset`, checked against a ``Model``.

Sources (``load_data(source, model)``; see ``docs/data.md``):

==================================== ==============================================================
``file.npz``                         arrays ``x``, ``y``, optional ``x_test``, ``y_test``
``file.csv[:COLUMN]``                one example per row, header optional; label column by header
                                     name or index (``:label``, ``:0``, ``:-1``; several targets
                                     ``:t1,t2``); default: the last column (last ``targets`` columns)
``DIR`` or ``IMAGES,LABELS``         IDX files as MNIST ships them (``train-images-idx3-ubyte``,
                                     ``train-labels-idx1-ubyte``, ``t10k-*``), gzipped or not
``spirals``, ``moons``, ``blobs``    synthetic 2-D sets generated in code, seeded, with a test split;
                                     options ``spirals:n=3000,noise=0.2,seed=0`` (types and ranges in
                                     ``OPTIONS``; at most ``MAX_GENERATED_BYTES`` while generating)
``digits``                           scikit-learn's 8x8 digits (needs scikit-learn)
``fashion-mnist``                    IDX files from ``--data-dir``, ``$DNNSPEC_DATA`` or the Debian
                                     package ``dataset-fashion-mnist``
==================================== ==============================================================

Arrays keep their raw units: uint8 images stay uint8 (the model's ``input.scale`` turns
them into [0, 1]); other inputs become float32. ``x`` is reshaped (a view, no copy) to
``(N, *model.input.shape)``. Classification labels become int64 class indices ``(N,)``;
regression targets float32 ``(N, targets)``.

Every size a file claims (IDX dimensions, .npy/.npz array headers) is checked against
the file and the machine's memory before anything that size is allocated.
"""

from __future__ import annotations

import difflib
import gzip
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import ir
from .errors import DataError

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
BUILTINS = ("spirals", "moons", "blobs", "digits", "fashion-mnist")


@dataclass(frozen=True)
class Dataset:
    """A training split and an optional test split in raw units.

    ``x_train``: ``(N, *input.shape)`` uint8 or float32; ``y_train``: ``(N,)`` int64 class
    indices or ``(N, targets)`` float32; ``x_test``/``y_test`` likewise or None.
    ``path`` is the file or source the arrays came from (named in every DataError).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    name: str = ""
    class_names: tuple[str, ...] = ()
    path: str = ""


# --- entry point -------------------------------------------------------------------


def load_data(source: str | None, model: ir.Model, data_dir: str | os.PathLike | None = None,
              batch: int | None = None) -> Dataset:
    """Read ``source`` (or the spec's ``data`` statement when None) and check it against ``model``.

    Raises DataError naming the file for every problem; returns arrays shaped for the model.
    """
    source = source if source is not None else model.data
    if not source:
        raise DataError(f"{model.path}: no data source: pass --data SOURCE (a .npz/.csv file, an IDX folder, "
                        f"or one of {', '.join(BUILTINS)}) or write 'data \"SOURCE\"' in the spec")
    raw = read_source(str(source), model, data_dir)
    return check_data(raw, model, batch)


def read_source(source: str, model: ir.Model, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Read ``source`` without checking it against the model (shapes as stored)."""
    path = _resolve(source, model)
    if path is not None:
        return _read_path(path, "")
    base, _, opts = source.partition(":")
    if base in BUILTINS:
        return _read_builtin(base, _parse_options(source, opts), data_dir)
    base_path = _resolve(base, model)
    if base_path is not None:
        return _read_path(base_path, opts)
    if "," in source and not opts:
        parts = [_resolve(p, model) for p in source.split(",")]
        if len(parts) == 2 and all(parts):
            return _read_idx_pair(parts[0], parts[1])
    raise DataError(_unknown_source_message(source, base))


def _unknown_source_message(source: str, base: str) -> str:
    if "/" in base or "." in base or os.sep in base:
        return (f"{source}: data file not found; give an existing .npz/.csv file or IDX folder "
                f"(relative paths are read from the current directory or the spec's folder)")
    close = difflib.get_close_matches(base, BUILTINS, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (f"{source}: unknown data source; {hint}built-in sets are {', '.join(BUILTINS)}, "
            f"or give a .npz/.csv file or an IDX folder")


def _resolve(name: str, model: ir.Model) -> Path | None:
    """An existing path for ``name``: as given (cwd), else relative to the spec's folder."""
    if not name:
        return None
    p = Path(name).expanduser()
    if _exists(p):
        return p
    if not p.is_absolute() and model.path and not model.path.startswith("<"):
        q = Path(model.path).parent / p
        if _exists(q):
            return q
    return None


def _exists(path: Path) -> bool:
    """Path.exists, false for names the system cannot even look up (too long, NUL bytes)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _read_path(path: Path, column: str) -> Dataset:
    if path.is_dir():
        return _read_idx_dir(path, path.name)
    suffix = path.name.lower()
    if column and not (suffix.endswith(".csv") or suffix.endswith(".csv.gz")):
        raise DataError(f"{path}: ':{column}' selects a label column, which only .csv files have")
    if suffix.endswith(".npz"):
        return _read_npz(path)
    if suffix.endswith(".csv") or suffix.endswith(".csv.gz"):
        return _read_csv(path, column)
    if "idx" in suffix or suffix.endswith("-ubyte"):
        raise DataError(f"{path}: an IDX file alone has no labels; give its folder or IMAGES,LABELS")
    raise DataError(f"{path}: unknown data file type; use .npz (arrays x, y), .csv, or an IDX folder")


def _parse_options(source: str, text: str) -> dict[str, str]:
    """``n=3000,noise=0.2`` -> {"n": "3000", "noise": "0.2"}; each set checks and converts its own values."""
    opts: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise DataError(f"{source}: bad option '{item}'; write options as name=number, "
                            f"e.g. spirals:n=3000,noise=0.2")
        if key in opts:
            raise DataError(f"{source}: option '{key}' is given twice; give it once")
        opts[key] = value
    return opts


# --- files -------------------------------------------------------------------------


#: What reading a damaged file can raise (zlib.error: a corrupt deflate stream in .gz or .npz;
#: RuntimeError/NotImplementedError: an encrypted or exotically compressed zip member;
#: TokenError/SyntaxError: a garbled .npy header, which NumPy tokenizes).
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, MemoryError, RuntimeError,
               NotImplementedError, tokenize.TokenError, SyntaxError)
#: Deflate cannot expand data by more than 1032:1, so a member claiming more is lying.
DEFLATE_MAX_RATIO = 1032


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None when the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(path: Path | str, nbytes: int, what: str) -> None:
    """DataError when ``nbytes`` exceed this machine's memory: checked before allocating them."""
    total = physical_memory()
    if total and nbytes > total:
        raise DataError(f"{path}: {what} would take {nbytes / 2**30:.1f} GiB, more than this machine's "
                        f"{total / 2**30:.1f} GiB of memory")


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy stream ``f``, read without touching the data."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    return tuple(int(d) for d in shape), dtype, f.tell()


def _data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file (no pickle); its header's size is checked against the file before allocating."""
    try:
        with open(path, "rb") as f:
            shape, dtype, head = _npy_header(f)
        nbytes = _data_bytes(shape, dtype)
        found = path.stat().st_size - head
        if nbytes > found:
            raise DataError(f"{path}: truncated .npy file: its header claims {_fmt(shape)} {dtype} "
                            f"({nbytes:,} bytes) but the file holds {found:,}")
        check_fits(path, nbytes, f"the array {_fmt(shape)} {dtype}")
        return np.load(path, allow_pickle=False)
    except DataError:
        raise
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read .npy file ({e}); is it truncated or corrupt?") from None


def read_npz_arrays(path: Path, choose: Callable[[list[str]], Iterable[str]]) -> dict[str, np.ndarray]:
    """The arrays ``choose(names)`` picks from a ``.npz`` file (no pickle), each size-checked first.

    ``choose`` gets the array names in the file and returns those to read (or raises
    DataError). A member's header must fit the member's stated size, which must fit its
    compressed size (deflate expands at most 1032:1), which must fit the file.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
            return {k: _read_member(path, zf, members[k]) for k in choose(list(members))}
    except DataError:
        raise
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read .npz file ({e}); is it truncated or corrupt, "
                        f"or not a NumPy .npz archive?") from None


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    room = info.compress_size * (DEFLATE_MAX_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1) + 64
    if info.header_offset + info.compress_size > path.stat().st_size or info.file_size > room:
        raise DataError(f"{path}: array {info.filename[:-4]} is truncated or corrupt (its stated size does not "
                        f"fit the file)")
    with zf.open(info) as f:
        shape, dtype, head = _npy_header(f)
        nbytes = _data_bytes(shape, dtype)
        if nbytes > info.file_size - head:
            raise DataError(f"{path}: array {info.filename[:-4]} claims {_fmt(shape)} {dtype} ({nbytes:,} bytes) "
                            f"but holds {info.file_size - head:,}; the file is truncated or corrupt")
        check_fits(path, nbytes, f"array {info.filename[:-4]} {_fmt(shape)} {dtype}")
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_npz(path: Path) -> Dataset:
    """``.npz`` with ``x``, ``y`` and optional ``x_test``, ``y_test`` (no pickle)."""

    def choose(names: list[str]) -> list[str]:
        missing = {"x", "y"} - set(names)
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(sorted(missing))}; a .npz data file "
                            f"holds x, y and optionally x_test, y_test (found {', '.join(sorted(names)) or 'none'})")
        if ("x_test" in names) != ("y_test" in names):
            raise DataError(f"{path}: has only one of x_test and y_test; give both or neither")
        return [k for k in ("x", "y", "x_test", "y_test") if k in names]

    arrays = read_npz_arrays(path, choose)
    return Dataset(arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"),
                   name=path.stem, path=str(path))


def read_csv_table(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """(header or None, float64 table (rows, columns)) of a numeric CSV file, gzipped or not.

    The text, its lines and the table take about 6 bytes per byte of text (a table of
    one-digit numbers holds one float64 per 2 characters): a plain file that would not
    fit in memory is refused before it is read.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        if not gz:
            check_fits(path, 6 * path.stat().st_size, "reading this CSV file")
        opener = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except DataError:
        raise
    except READ_ERRORS as e:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: cannot read CSV file ({e})") from None
    if not lines:
        raise DataError(f"{path}: the CSV file is empty")
    header = _csv_header(lines[0])
    body = lines[1:] if header else lines
    if not body:
        raise DataError(f"{path}: the CSV file has a header but no rows of numbers")
    try:
        table = np.loadtxt(body, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: not a numeric CSV table ({e}); every row after the header must hold "
                        f"the same number of numbers") from None
    return header, table


def _read_csv(path: Path, column: str) -> Dataset:
    """A CSV file: numeric rows, optional header; ``column`` names the label column(s)."""
    header, table = read_csv_table(path)
    cols = _label_columns(path, column, header, table.shape[1])
    keep = [i for i in range(table.shape[1]) if i not in cols]
    y = table[:, cols[0]] if len(cols) == 1 else table[:, cols]
    return Dataset(table[:, keep], y, name=path.stem, path=str(path))


def _csv_header(line: str) -> list[str] | None:
    cells = [c.strip().strip('"') for c in line.split(",")]
    try:
        [float(c) for c in cells]
    except ValueError:
        return cells
    return None


def _label_columns(path: Path, column: str, header: list[str] | None, width: int) -> list[int]:
    """Column indices of the labels: by header name or index; default the last column."""
    if width < 2:
        raise DataError(f"{path}: a CSV data file needs at least two columns (features and a label)")
    if not column:
        return [width - 1]
    out = []
    for name in column.split(","):
        name = name.strip()
        if header and name in header:
            out.append(header.index(name))
            continue
        try:
            i = int(name)
        except ValueError:
            known = f"columns are {', '.join(header)}" if header else "the file has no header row"
            raise DataError(f"{path}: no column named '{name}' ({known}); write {path.name}:NAME "
                            f"or {path.name}:INDEX") from None
        if not -width <= i < width:
            raise DataError(f"{path}: column index {i} is outside the {width} columns")
        out.append(i % width)
    if len(set(out)) < len(out):
        raise DataError(f"{path}: ':{column}' names a label column twice; name each once")
    if len(out) >= width:
        raise DataError(f"{path}: ':{column}' makes every column a label, which leaves no features")
    return out


# --- IDX (MNIST format) ------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (gzipped when its name ends in .gz) -> array of its stored dtype and shape.

    Format: 2 zero bytes, a type byte, a byte with the number of dims, dims as big-endian
    uint32, then the data in row-major order. The size the header claims is checked
    against the file (and this machine's memory) first, then read into one preallocated array.
    """
    path = Path(path)
    gz = path.name.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            dtype, shape = _idx_header(path, f)
            _check_idx_size(path, _data_bytes(shape, dtype), 4 + 4 * len(shape), gz)
            arr = np.empty(shape, dtype=dtype)
            got = f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
            if gz:
                f.read(1)  # reach the gzip trailer, whose CRC check catches corrupt data
    except DataError:
        raise
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read IDX file ({e}); is it corrupt?") from None
    if got != arr.nbytes:
        raise DataError(f"{path}: truncated IDX file: expected {arr.nbytes} data bytes, found {got}")
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _idx_header(path: Path, f: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) from the magic number and dims of an IDX stream."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
    dims = np.frombuffer(f.read(4 * head[3]), dtype=">u4")
    if len(dims) != head[3]:
        raise DataError(f"{path}: truncated IDX header")
    return np.dtype(_IDX_TYPES[head[2]]), tuple(int(d) for d in dims)


def _check_idx_size(path: Path, nbytes: int, head: int, gz: bool) -> None:
    """The data the header claims must fit the file: exactly for plain files, 1032:1 for gzip; and memory."""
    size = path.stat().st_size
    if not gz and nbytes > size - head:
        raise DataError(f"{path}: truncated IDX file: expected {nbytes} data bytes, found {size - head}")
    if gz and nbytes > DEFLATE_MAX_RATIO * size:
        raise DataError(f"{path}: its IDX header claims {nbytes:,} data bytes, more than a {size:,}-byte gzip "
                        f"file can hold; the file is truncated or corrupt")
    check_fits(path, nbytes, "the IDX data")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx_dir(folder: Path, name: str, class_names: tuple[str, ...] = ()) -> Dataset:
    """A folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] and optional t10k-*."""
    xs, ys = _find_idx(folder, "train-images-idx3-ubyte"), _find_idx(folder, "train-labels-idx1-ubyte")
    if xs is None or ys is None:
        raise DataError(f"{folder}: no IDX training files; expected train-images-idx3-ubyte[.gz] and "
                        f"train-labels-idx1-ubyte[.gz] in this folder")
    xt, yt = _find_idx(folder, "t10k-images-idx3-ubyte"), _find_idx(folder, "t10k-labels-idx1-ubyte")
    test = (read_idx(xt), read_idx(yt)) if xt and yt else (None, None)
    return Dataset(read_idx(xs), read_idx(ys), *test, name=name, class_names=class_names, path=str(folder))


def _read_idx_pair(images: Path, labels: Path) -> Dataset:
    return Dataset(read_idx(images), read_idx(labels), name=images.name, path=f"{images},{labels}")


# --- built-in sets -----------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a built-in set: a whole number (``kind=int``) or a real number in [low, high]."""

    kind: type
    low: float
    high: float

    def convert(self, source: str, key: str, value: Any) -> int | float:
        """``value`` (option text or a Python number) as ``kind``; DataError naming the range otherwise."""
        number = _number(value)
        ok = number is not None and (isinstance(number, int) or math.isfinite(number))  # 10**400 is an int
        ok = ok and self.low <= number <= self.high and (self.kind is float or number == int(number))
        if not ok:
            what = "a whole number" if self.kind is int else "a number"
            shown = str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."
            raise DataError(f"{source}: option {key}={shown} must be {what} from {self._fmt(self.low)} "
                            f"to {self._fmt(self.high)}")
        return int(number) if self.kind is int else float(number)

    def _fmt(self, bound: float) -> str:
        return f"{int(bound):,}" if self.kind is int else f"{bound:g}"


def _number(value: Any) -> int | float | None:
    """Option text or a Python number -> int (exact, e.g. a long seed) or float; None when not a number."""
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                pass
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return value.item() if isinstance(value, np.generic) else value
    return None


_N = Option(int, 1, 10**8)
_SEED = Option(int, 0, 2**32 - 1)  # as the spec's train seed
_NOISE = Option(float, 0.0, 100.0)
#: Options of the built-in sets with their types and ranges (docs/data.md lists them with their defaults).
OPTIONS: dict[str, dict[str, Option]] = {
    "spirals": {"n": _N, "noise": _NOISE, "seed": _SEED, "classes": Option(int, 1, 1000)},
    "moons": {"n": _N, "noise": _NOISE, "seed": _SEED},
    "blobs": {"n": _N, "classes": Option(int, 1, 10_000), "features": Option(int, 1, 1_000_000),
              "std": Option(float, 0.0, 1e6), "seed": _SEED},
    "digits": {"seed": _SEED},
    "fashion-mnist": {},
}
#: The most memory a synthetic set may take while it is generated (its arrays and temporaries).
MAX_GENERATED_BYTES = 1 << 30


def _read_builtin(name: str, opts: dict[str, str], data_dir: str | os.PathLike | None) -> Dataset:
    allowed = tuple(OPTIONS[name])
    bad = sorted(set(opts) - set(allowed))
    if bad:
        takes = f"takes {', '.join(allowed)}" if allowed else "takes no options"
        raise DataError(f"{name}: unknown option '{bad[0]}'; {name} {takes}")
    if name == "fashion-mnist":
        return fashion_mnist(data_dir)
    maker = {"spirals": spirals, "moons": moons, "blobs": blobs, "digits": digits}[name]
    return maker(**opts)


def _checked(name: str, **values: Any) -> tuple[Any, ...]:
    """The values of ``name``'s options, each converted and checked against its range, in the order given."""
    return tuple(OPTIONS[name][k].convert(name, k, v) for k, v in values.items())


def generation_bytes(name: str, n: int, features: int = 2, classes: int = 3) -> float:
    """Peak bytes that generating ``name`` with these options takes (measured with tracemalloc, plus a margin).

    rows = n + n//4; spirals and moons take 96 bytes per row (float64 temporaries of the
    2-D points; + classes rows: spirals rounds each arm up), blobs 20*features + 48 per
    row plus twice its (classes, features) float64 centres (room for a temporary).
    """
    rows = n + n // 4
    if name == "blobs":
        return rows * (20.0 * features + 48.0) + 16.0 * classes * features
    return (rows + classes) * 96.0


def _check_bytes(name: str, n: int, **sizes: int) -> None:
    """Refuse a set whose generation would take more than MAX_GENERATED_BYTES, before allocating anything."""
    need = generation_bytes(name, n, **sizes)
    if need <= MAX_GENERATED_BYTES:
        return
    base = generation_bytes(name, 0, **sizes)  # bytes grow linearly in n above this
    n_max = int(n * (MAX_GENERATED_BYTES - base) / (need - base))
    fix = f"use n <= {n_max:,} with these options" if n_max >= 1 else "use fewer features or classes"
    shape = f" of {sizes['features']:,} features" if "features" in sizes else ""
    raise DataError(f"{name}: generating n={n:,} points{shape} would take about {need / 2**30:.1f} GiB, more "
                    f"than the {MAX_GENERATED_BYTES / 2**30:g} GiB a built-in set may use; {fix}")


def _split(name: str, x: np.ndarray, y: np.ndarray, n_train: int, rng: np.random.Generator,
           class_names: tuple[str, ...] = ()) -> Dataset:
    """Shuffle, then the first ``n_train`` rows train and the rest test."""
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name=name,
                   class_names=class_names, path=name)


def spirals(n: int = 3000, noise: float = 0.2, seed: int = 0, classes: int = 3) -> Dataset:
    """The CS231n spiral: ``classes`` arms of n/classes points; n/4 more points form the test split.

    Arm j: radius r = linspace(0, 1), angle t = linspace(4j, 4(j+1)) + noise*N(0, 1),
    x = (r sin t, r cos t). float32 ``(n, 2)``, labels int64.
    """
    n, noise, seed, classes = _checked("spirals", n=n, noise=noise, seed=seed, classes=classes)
    _check_bytes("spirals", n, classes=classes)
    rng = np.random.default_rng(seed)
    per = math.ceil((n + n // 4) / classes)
    r = np.tile(np.linspace(0.0, 1.0, per), classes)
    j = np.repeat(np.arange(classes), per)
    t = np.linspace(0.0, 4.0, per)[None, :].repeat(classes, 0).ravel() + 4.0 * j + rng.normal(0, noise, per * classes)
    x = np.stack([r * np.sin(t), r * np.cos(t)], axis=1).astype(np.float32)
    return _split("spirals", x, j.astype(np.int64), n, rng)


def moons(n: int = 2000, noise: float = 0.1, seed: int = 0) -> Dataset:
    """Two interleaving half circles (as scikit-learn's make_moons) with Gaussian noise; n/4 test points."""
    n, noise, seed = _checked("moons", n=n, noise=noise, seed=seed)
    _check_bytes("moons", n, classes=2)
    rng = np.random.default_rng(seed)
    total = n + n // 4
    y = np.arange(total) % 2
    t = rng.uniform(0.0, np.pi, total)
    x = np.where(y[:, None] == 0,
                 np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = (x + rng.normal(0.0, noise, x.shape)).astype(np.float32)
    return _split("moons", x, y.astype(np.int64), n, rng)


def blobs(n: int = 1500, classes: int = 3, features: int = 2, std: float = 1.0, seed: int = 0) -> Dataset:
    """Gaussian blobs: centres uniform in [-10, 10]^features, spread ``std``; n/4 test points."""
    n, classes, features, std, seed = _checked("blobs", n=n, classes=classes, features=features, std=std, seed=seed)
    _check_bytes("blobs", n, features=features, classes=classes)
    rng = np.random.default_rng(seed)
    total = n + n // 4
    centres = rng.uniform(-10.0, 10.0, (classes, features))
    y = np.arange(total) % classes
    x = (centres[y] + rng.normal(0.0, std, (total, features))).astype(np.float32)
    return _split("blobs", x, y.astype(np.int64), n, rng)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, values 0..16), 80% train and 20% test, shuffled by ``seed``."""
    (seed,) = _checked("digits", seed=seed)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits: needs scikit-learn; install it with 'pip install scikit-learn'") from None
    d = load_digits()
    x = d.images.astype(np.float32)
    return _split("digits", x, d.target.astype(np.int64), int(len(x) * 0.8), np.random.default_rng(seed),
                  tuple(str(i) for i in range(10)))


def fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST from ``data_dir``, ``$DNNSPEC_DATA`` or the Debian package; uint8 ``(N, 28, 28)``."""
    tried = []
    for base in (data_dir, os.environ.get("DNNSPEC_DATA"), FASHION_SYSTEM_DIR):
        if not base:
            continue
        for folder in (Path(base), Path(base) / "fashion-mnist"):
            tried.append(str(folder))
            if _find_idx(folder, "train-images-idx3-ubyte") and _find_idx(folder, "train-labels-idx1-ubyte"):
                return _read_idx_dir(folder, "fashion-mnist", FASHION_CLASSES)
    raise DataError(f"fashion-mnist: IDX files not found (looked in {', '.join(tried)}); install them with "
                    f"'apt-get install dataset-fashion-mnist', or pass --data-dir DIR (or set DNNSPEC_DATA) "
                    f"naming a folder with train-images-idx3-ubyte.gz and its siblings")


# --- checks against the model ------------------------------------------------------


def check_data(data: Dataset, model: ir.Model, batch: int | None = None) -> Dataset:
    """Check both splits against the model; return them shaped and typed for it.

    ``x`` -> ``(N, *input.shape)`` (uint8 kept, else float32); labels -> int64 ``(N,)``
    for classification, float32 ``(N, targets)`` for regression. ``batch`` defaults to
    the spec's ``train batch``; the training split must hold at least one batch.
    """
    where = data.path or data.name or "data"
    x, y = _check_split(where, "", data.x_train, data.y_train, model)
    batch = int(model.train.get("batch", 1)) if batch is None else int(batch)
    if len(x) < batch:
        raise DataError(f"{where}: only {len(x)} training examples, fewer than one batch of {batch}; "
                        f"use a smaller batch (--batch) or more data")
    xt = yt = None
    if data.x_test is not None and data.y_test is not None:
        xt, yt = _check_split(where, "test ", data.x_test, data.y_test, model)
    return replace(data, x_train=x, y_train=y, x_test=xt, y_test=yt)


def _check_split(where: str, split: str, x: Any, y: Any, model: ir.Model) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        nx = len(x) if x.ndim else 0
        ny = len(y) if y.ndim else 0
        raise DataError(f"{where}: {split}x has {nx} examples but {split}y has {ny} labels; they must match")
    if len(x) == 0:
        raise DataError(f"{where}: the {split}data has no examples")
    x = _shape_inputs(where, split, x, model.input)
    return x, _check_labels(where, split, y, model.task)


def _shape_inputs(where: str, split: str, x: np.ndarray, inp: ir.Input) -> np.ndarray:
    """Reshape ``(N, ...)`` to ``(N, *inp.shape)`` when the value counts agree; uint8 stays uint8."""
    want = tuple(inp.shape)
    found = x.shape[1:]
    if math.prod(found) != math.prod(want):
        kind = "images of" if inp.kind == "image" else "examples of"
        raise DataError(f"{where}: the spec expects {split}{kind} shape {_fmt(want)} ({math.prod(want)} values), "
                        f"found {_fmt(found)} ({math.prod(found)} values) per example")
    if x.dtype.kind not in "uif" and x.dtype != np.bool_:
        raise DataError(f"{where}: {split}x holds {x.dtype} values; expected numbers")
    if len(want) == 3 and len(found) == 3 and found == (want[1], want[2], want[0]) and found != want:
        x = x.transpose(0, 3, 1, 2)  # NHWC images as stored by many tools -> NCHW
    if x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(1))[0])
            raise DataError(f"{where}: {split}x holds NaN or inf (first in example {bad}); clean the data first")
    return x.reshape((len(x), *want))


def _check_labels(where: str, split: str, y: np.ndarray, task: ir.Task) -> np.ndarray:
    if task.kind == "regression":
        return _check_targets(where, split, y, task.targets)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: {split}labels have shape {_fmt(y.shape)}; expected class indices of shape (N,)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            i = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            raise DataError(f"{where}: {split}label {y[i].item()!r} at example {i} is not a whole number; "
                            f"classification labels are class indices 0..{task.classes - 1}")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: {split}labels hold {y.dtype} values; expected class indices 0..{task.classes - 1}")
    y = y.astype(np.int64, copy=False)
    bad = (y < 0) | (y >= task.classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: {split}label {y[i]} at example {i} is outside [0, {task.classes}); "
                        f"the spec has {task.classes} classes")
    return y


def _check_targets(where: str, split: str, y: np.ndarray, targets: int) -> np.ndarray:
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != targets:
        raise DataError(f"{where}: {split}targets have width {y.shape[1] if y.ndim == 2 else _fmt(y.shape[1:])}, "
                        f"the spec expects {targets} target(s) per example")
    if y.dtype.kind not in "uifb":
        raise DataError(f"{where}: {split}targets hold {y.dtype} values; expected numbers")
    y = y.astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        raise DataError(f"{where}: {split}targets hold NaN or inf; clean the data first")
    return y


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"


__all__ = ["BUILTINS", "FASHION_CLASSES", "Dataset", "blobs", "check_data", "digits", "fashion_mnist",
           "load_data", "moons", "read_csv_table", "read_idx", "read_source", "spirals"]
