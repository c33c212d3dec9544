"""Data sources: a source name or path -> :class:`Dataset`, checked against a ``Model``.

Sources (``load_data(source, model)``; see ``docs/data.md``):

==================================== ==============================================================
``file.npz``                         arrays ``x``, ``y``, optional ``x_test``, ``y_test``
``file.csv[:label=NAME]``            one example per row, header row; label column by header name or
                                     index (``:label=quality``, ``:quality``, ``:0``, ``:-1``; several
                                     targets ``:t1,t2``); default: the last column (last ``targets``
                                     columns); text labels and text columns (one-hot): dnnspec.tables
``DIR[:resize=fit|crop|pad]``        an image folder (one subfolder per class, optional train/ val/
                                     test/ splits): dnnspec.images
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
regression targets float32 ``(N, targets)``, which must be 0 or 1 for a multi-label spec
(``targets N`` with binary_cross_entropy).

Every size a file claims (IDX dimensions, .npy/.npz array headers) is checked against
the file and the machine's memory before anything that size is allocated.
"""

from __future__ import annotations

import difflib
import gzip
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import ir

# the file readers live in dnnspec.datafiles; their names stay importable from here
from .datafiles import (  # noqa: F401
    DEFLATE_MAX_RATIO,
    READ_ERRORS,
    check_fits,
    data_bytes,
    fmt_dims,
    physical_memory,
    read_npy,
    read_npz_arrays,
)
from .dataschema import RESIZE_MODES, SOURCE_OPTIONS, DataSchema
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
    ``x_val``/``y_val``: a validation split the source names (an image folder's ``val/``).
    ``schema``: what the data teaches a model besides its weights (class names of text labels
    or folders, a table's columns and vocabularies; dnnspec.dataschema), None for arrays.
    ``raw_train``/``raw_test``: a table's raw feature cells, object ``(N, columns)``, when its
    exported model takes the raw columns (a table with text columns). ``notes``: lines for the
    user (which column is the label, files left out).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    name: str = ""
    class_names: tuple[str, ...] = ()
    path: str = ""
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    schema: DataSchema | None = None
    raw_train: np.ndarray | None = None
    raw_test: np.ndarray | None = None
    notes: tuple[str, ...] = ()


# --- entry point -------------------------------------------------------------------


def load_data(source: str | None, model: ir.Model, data_dir: str | os.PathLike | None = None,
              batch: int | None = None, *, label: str | None = None, schema: DataSchema | None = None) -> Dataset:
    """Read ``source`` (or the spec's ``data`` statement when None) and check it against ``model``.

    ``label``: the label column of a CSV table (as ``:label=NAME``). ``schema``: a trained
    model's data schema (evaluation): its class names, columns and vocabularies are used
    instead of being learned from this data. Raises DataError naming the file for every
    problem; returns arrays shaped for the model.
    """
    source = source if source is not None else model.data
    if not source:
        raise DataError(f"{model.path}: no data source: pass --data SOURCE (a .npz/.csv file, an image or IDX "
                        f"folder, or one of {', '.join(BUILTINS)}) or write 'data \"SOURCE\"' in the spec")
    raw = read_source(str(source), model, data_dir, label=label, schema=schema)
    return check_data(raw, model, batch)


def read_source(source: str, model: ir.Model, data_dir: str | os.PathLike | None = None, *,
                label: str | None = None, schema: DataSchema | None = None) -> Dataset:
    """Read ``source`` without checking it against the model (shapes as stored).

    CSV tables and image folders need the model's task and input to be read (labels by
    class name, images at the spec's size); ``model`` may then be anything with ``path``.
    """
    path = _resolve(source, model)
    if path is not None:
        return _read_path(path, _file_options(path, "", label), model, schema)
    base, _, opts = source.partition(":")
    if base in BUILTINS:
        if label:
            raise DataError(f"{base}: --label applies to a CSV table; {base} has its own labels")
        return _read_builtin(base, _parse_options(source, opts), data_dir)
    base_path = _resolve(base, model)
    if base_path is not None:
        return _read_path(base_path, _file_options(base_path, opts, label), model, schema)
    if "," in source and not opts:
        parts = [_resolve(p, model) for p in source.split(",")]
        if len(parts) == 2 and all(parts):
            return _read_idx_pair(parts[0], parts[1])
    raise DataError(_unknown_source_message(source, base))


def _unknown_source_message(source: str, base: str) -> str:
    if "/" in base or "." in base or os.sep in base:
        return (f"{source}: data file not found; give an existing .npz/.csv file, image folder or IDX folder "
                f"(relative paths are read from the current directory or the spec's folder)")
    close = difflib.get_close_matches(base, BUILTINS, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (f"{source}: unknown data source; {hint}built-in sets are {', '.join(BUILTINS)}, "
            f"or give a .npz/.csv file, an image folder or an IDX folder")


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


def _source_kind(path: Path) -> str:
    """``csv``, ``folder`` or ``file``: which options (dataschema.SOURCE_OPTIONS) a source takes."""
    name = path.name.lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    return "folder" if path.is_dir() else "file"


def _file_options(path: Path, text: str, label: str | None = None) -> dict[str, str]:
    """``label=quality,resize=fit`` -> dict; bare items are label columns (``:quality``, ``:t1,t2``, ``:0``).

    ``label`` (``--label``) joins them; each option is checked against the kind of source.
    """
    opts: dict[str, str] = {}
    bare: list[str] = []
    last = ""
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq:
            if last == "label":
                opts["label"] += "," + item  # label=t1,t2
            elif last:
                raise DataError(f"{path}: bad option '{item}' after {last}=; write options as name=value")
            else:
                bare.append(item)
            continue
        if key not in SOURCE_OPTIONS:
            raise DataError(f"{path}: unknown option '{key}'; a data file takes label=NAME (a CSV table) or "
                            f"resize={'|'.join(RESIZE_MODES)} (an image folder)")
        if key in opts or (key == "label" and bare):
            raise DataError(f"{path}: option '{key}' is given twice; give it once")
        opts[key], last = value, key
    if bare:
        opts["label"] = ",".join(bare)
    if label:
        if opts.get("label", label) != label:
            raise DataError(f"{path}: the label column is given twice (label={opts['label']} in the source, "
                            f"--label {label}); give it once")
        opts["label"] = label
    _check_file_options(path, opts)
    return opts


def _check_file_options(path: Path, opts: dict[str, str]) -> None:
    kind = _source_kind(path)
    if "label" in opts and kind != "csv":
        raise DataError(f"{path}: ':{opts['label']}' (label=) selects a label column, which only .csv files have")
    if "resize" in opts:
        if kind != "folder":
            raise DataError(f"{path}: resize= applies to an image folder; for single images use predict's "
                            f"model, which resizes as it was trained")
        if opts["resize"] not in RESIZE_MODES:
            raise DataError(f"{path}: resize={opts['resize']} is not a resize mode; choose "
                            f"{', '.join(RESIZE_MODES)}")


def _read_path(path: Path, opts: dict[str, str], model: Any, schema: DataSchema | None = None) -> Dataset:
    if path.is_dir():
        if _find_idx(path, "train-images-idx3-ubyte") or not _is_image_folder(path):
            if "resize" in opts:
                raise DataError(f"{path}: an IDX folder, whose images have one size; drop resize=")
            return _read_idx_dir(path, path.name)
        return _read_image_folder(path, opts.get("resize", ""), model, schema)
    suffix = path.name.lower()
    if suffix.endswith(".npz"):
        return _read_npz(path)
    if suffix.endswith(".csv") or suffix.endswith(".csv.gz"):
        return _read_table(path, opts.get("label"), model, schema)
    if "idx" in suffix or suffix.endswith("-ubyte"):
        raise DataError(f"{path}: an IDX file alone has no labels; give its folder or IMAGES,LABELS")
    raise DataError(f"{path}: unknown data file type; use .npz (arrays x, y), .csv, an image folder or an IDX folder")


def _is_image_folder(path: Path) -> bool:
    from .images import is_image_folder

    return is_image_folder(path)


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
    """(header or None, float64 table (rows, columns)) of a CSV file of numbers only, gzipped or not.

    Read by :func:`dnnspec.tables.read_table` (memory checked before reading; positions in
    errors); a text or missing cell is refused with its row and column.
    """
    from .tables import read_table

    table = read_table(Path(path))
    for j in range(table.width):
        table.require(j)
        if table.kinds[j] != "number":
            raise DataError(f"{path}: not a numeric CSV table: {table.column(j)} holds text (e.g. "
                            f"'{table.columns[j][0]}' at row {int(table.rows[0])}); this reader takes numbers only")
    return (list(table.names) if table.header else None), np.stack(table.columns, axis=1)


def _read_table(path: Path, label: str | None, model: Any, schema: DataSchema | None) -> Dataset:
    """A CSV table for ``model``'s task (dnnspec.tables): features encoded, labels as class indices or targets."""
    from . import tables

    text = [c.name for c in schema.columns if c.kind == "text"] if schema is not None else ()
    table = tables.read_table(path, text)
    task = getattr(model, "task", None)
    if task is None:  # another tool's model: numbers as stored, the label column as chosen
        choice = tables.choose_label(table, label)
        keep = [j for j in range(table.width) if j not in choice.columns]
        for j in range(table.width):
            table.require(j)
        y = np.stack([table.columns[j] for j in choice.columns], axis=1)
        x = tables.encode(table, keep, tables.learn_columns(table, keep))
        return Dataset(x, y[:, 0] if y.shape[1] == 1 else y, name=path.stem, path=str(path), notes=(choice.phrase,))
    part = tables.table_data(table, task, label, schema)
    if _multilabel(model):  # here, where the file's rows and columns are known
        bad = _not_yes_no(part.y)
        if bad is not None:
            i, j = bad
            raise DataError(f"{table.where(i, table.names.index(part.schema.label[j]))}: label {part.y[i, j]:g} is "
                            f"not 0 or 1; {_YES_NO_FIX.format(t=task.targets)}; {part.phrase}")
    return Dataset(part.x, part.y, name=path.stem, class_names=part.schema.class_names, path=str(path),
                   schema=part.schema, raw_train=part.raw, notes=(f"{path}: {part.phrase}",))


# --- image folders -------------------------------------------------------------------


def _read_image_folder(path: Path, resize: str, model: Any, schema: DataSchema | None) -> Dataset:
    """An image folder (dnnspec.images) decoded at the spec's image[C, H, W], labels by class folder."""
    from . import images

    inp, task = getattr(model, "input", None), getattr(model, "task", None)
    if inp is None or task is None:
        raise DataError(f"{path}: an image folder is read at the size a spec gives; this model has no spec")
    if inp.kind != "image":
        raise DataError(f"{path}: an image folder needs an image input; the spec says input [{_dims(inp.shape)}]: "
                        f"write input image[C, H, W] (C = 1 for grey, 3 for RGB) and flatten before dense layers")
    if task.kind != "classification":
        raise DataError(f"{path}: an image folder gives class labels (one subfolder per class), but the spec is a "
                        f"regression (targets {task.targets}); use .npz data for regression targets")
    names = task.class_names or (schema.class_names if schema is not None else ())
    folder = images.list_folder(path, names, task.classes)
    resize = resize or (schema.resize if schema is not None else "")
    x = images.decode_all(folder.files, inp.shape, resize, where=path)
    parts, start = {}, 0
    for split in images.SPLITS:
        if split in folder.splits:
            n = len(folder.splits[split])
            parts[split] = (x[start:start + n], folder.labels[split])
            start += n
    none = (None, None)
    notes = [f"{path}: {images.folder_summary(folder)}" + (f", resized ({resize})" if resize else "")]
    if folder.skipped:
        notes.append(f"{path}: left out {folder.skipped:,} files that are not images")
    return Dataset(*parts["train"], *parts.get("test", none), name=path.name, class_names=folder.class_names,
                   path=str(path), x_val=parts.get("val", none)[0], y_val=parts.get("val", none)[1],
                   schema=DataSchema("images", folder.class_names, resize=resize), notes=tuple(notes))


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


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
            _check_idx_size(path, data_bytes(shape, dtype), 4 + 4 * len(shape), gz)
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
        raise DataError(f"{folder}: neither an image folder (no PNG, JPEG, BMP or GIF files below it) nor an IDX "
                        f"folder (train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])")
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


#: Built-in sets already read by this process, when :func:`keep_builtins` asked for it (search workers).
_kept: dict[tuple, Dataset] | None = None


def keep_builtins() -> None:
    """Read each built-in set once in this process and hand out the same read-only arrays after.

    For ``dnnspec search`` workers, which train trial after trial on the same set: decompressing
    Fashion-MNIST took 0.24 s of a 1.2 s trial. The arrays are made read-only, so a write into
    them anywhere raises instead of changing the next trial's data.
    """
    global _kept
    if _kept is None:
        _kept = {}


def _read_builtin(name: str, opts: dict[str, str], data_dir: str | os.PathLike | None) -> Dataset:
    allowed = tuple(OPTIONS[name])
    bad = sorted(set(opts) - set(allowed))
    if bad:
        takes = f"takes {', '.join(allowed)}" if allowed else "takes no options"
        raise DataError(f"{name}: unknown option '{bad[0]}'; {name} {takes}")
    key = (name, tuple(sorted(opts.items())), str(data_dir) if data_dir is not None else None)
    if _kept is not None and key in _kept:
        return _kept[key]
    if name == "fashion-mnist":
        data = fashion_mnist(data_dir)
    else:
        data = {"spirals": spirals, "moons": moons, "blobs": blobs, "digits": digits}[name](**opts)
    if _kept is not None:
        for value in vars(data).values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        _kept[key] = data
    return data


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
    """Check every split against the model; return them shaped and typed for it.

    ``x`` -> ``(N, *input.shape)`` (uint8 kept, else float32); labels -> int64 ``(N,)``
    for classification, float32 ``(N, targets)`` for regression. ``batch`` defaults to
    the spec's ``train batch``; the training split must hold at least one batch.
    """
    where = data.path or data.name or "data"
    x, y = _check_split(where, "", data.x_train, data.y_train, model, data.schema)
    batch = int(model.train.get("batch", 1)) if batch is None else int(batch)
    if len(x) < batch:
        raise DataError(f"{where}: only {len(x)} training examples, fewer than one batch of {batch}; "
                        f"use a smaller batch (--batch) or more data")
    xt = yt = xv = yv = None
    if data.x_test is not None and data.y_test is not None:
        xt, yt = _check_split(where, "test ", data.x_test, data.y_test, model, data.schema)
    if data.x_val is not None and data.y_val is not None:
        xv, yv = _check_split(where, "validation ", data.x_val, data.y_val, model, data.schema)
    return replace(data, x_train=x, y_train=y, x_test=xt, y_test=yt, x_val=xv, y_val=yv)


def _check_split(where: str, split: str, x: Any, y: Any, model: ir.Model,
                 schema: DataSchema | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        nx = len(x) if x.ndim else 0
        ny = len(y) if y.ndim else 0
        raise DataError(f"{where}: {split}x has {nx} examples but {split}y has {ny} labels; they must match")
    if len(x) == 0:
        raise DataError(f"{where}: the {split}data has no examples")
    x = _shape_inputs(where, split, x, model.input, schema)
    y = _check_labels(where, split, y, model.task)
    bad = _not_yes_no(y) if _multilabel(model) else None
    if bad is not None:
        i, j = bad
        names = schema.label if schema is not None and len(schema.label) == y.shape[1] else ()
        column = f" (column {names[j]})" if names else ""
        raise DataError(f"{where}: {split}label {y[i, j]:g} at example {i}, output {j}{column} is not 0 or 1; "
                        f"{_YES_NO_FIX.format(t=model.task.targets)}")
    return x, y


_YES_NO_FIX = ("a multi-label spec (targets {t} with binary_cross_entropy) takes 0 (no) or 1 (yes) per label: "
               "write 0/1 labels, or use loss mse (with no sigmoid) for numeric targets")


def _multilabel(model: Any) -> bool:
    """``targets N`` with binary_cross_entropy: N yes/no labels per example."""
    task, loss = getattr(model, "task", None), getattr(model, "loss", None)
    return task is not None and loss is not None and ir.task_of(task.kind, loss.kind) == "multilabel"


def _not_yes_no(y: np.ndarray) -> tuple[int, int] | None:
    """(example, output) of the first value of ``y`` (N, T) that is neither 0 nor 1, or None."""
    bad = (y != 0) & (y != 1)
    if not bad.any():
        return None
    i, j = np.argwhere(bad)[0]
    return int(i), int(j)


def _shape_inputs(where: str, split: str, x: np.ndarray, inp: ir.Input, schema: DataSchema | None = None) -> np.ndarray:
    """Reshape ``(N, ...)`` to ``(N, *inp.shape)`` when the value counts agree; uint8 stays uint8."""
    want = tuple(inp.shape)
    found = x.shape[1:]
    if math.prod(found) != math.prod(want):
        raise DataError(f"{where}: {split}{describe_examples(found, schema)}; {spec_fix(found, inp, schema)}")
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


def _image_layout(found: tuple[int, ...]) -> tuple[tuple[int, int, int], str] | None:
    """((C, H, W), how stored) when per-example ``found`` looks like images, else None."""
    if len(found) == 2:
        return (1, *found), "grey"
    if len(found) == 3 and found[2] in (1, 3, 4) and found[0] > 4 and found[1] > 4:
        return (found[2], found[0], found[1]), "channels last"
    if len(found) == 3 and found[0] in (1, 3, 4):
        return found, "channels first"  # type: ignore[return-value]
    return None


def describe_examples(found: tuple[int, ...], schema: DataSchema | None = None) -> str:
    """What the data has per example: ``images are 32×32×3 (channels last)``, ``examples have 16 features``."""
    if schema is not None and schema.kind == "table" and len(found) == 1:
        return f"the data has {found[0]} features per example ({schema.describe_columns()})"
    image = _image_layout(found)
    if image is not None:
        (c, h, w), how = image
        dims = "×".join(map(str, found))
        return f"images are {dims} ({how}; {c * h * w:,} values)"
    values = math.prod(found)
    return f"examples have {found[0]} features" if len(found) == 1 else \
        f"examples have shape {fmt_dims(found)} ({values:,} values)"


def spec_fix(found: tuple[int, ...], inp: ir.Input, schema: DataSchema | None = None) -> str:
    """``the spec says image[1, 32, 32]: write image[3, 32, 32]`` for data of per-example shape ``found``."""
    says = f"image[{_dims(inp.shape)}]" if inp.kind == "image" else f"input [{_dims(inp.shape)}]"
    image = _image_layout(found) if not (schema is not None and schema.kind == "table") else None
    if image is not None and inp.kind == "image":
        return f"the spec says {says}: write image[{_dims(image[0])}]"
    if image is not None:
        return (f"the spec says {says}: write input image[{_dims(image[0])}] (with flatten before dense layers), "
                f"or input [{math.prod(found)}]")
    return f"the spec says {says}: write input [{math.prod(found)}]"


def _check_labels(where: str, split: str, y: np.ndarray, task: ir.Task) -> np.ndarray:
    if task.kind == "regression":
        return _check_targets(where, split, y, task.targets)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: {split}labels have shape {fmt_dims(y.shape)}; expected class indices of shape (N,)")
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
        from .tables import data_classes

        i = int(np.flatnonzero(bad)[0])
        subject = f"the {split.strip()} split" if split else "the data"
        raise DataError(f"{where}: {data_classes(y, subject=subject)}; the spec says "
                        f"classes {task.classes} (labels are class indices 0..{task.classes - 1}; label {y[i]} at "
                        f"example {i})")
    return y


def describe_dataset(data: Dataset, model: ir.Model) -> str:
    """What checked data holds, for ``dnnspec check --data``: its notes, splits, example shape, classes."""
    x = data.x_train
    splits = [f"{len(x):,} training"]
    splits += [f"{len(v):,} {name}" for name, v in (("validation", data.x_val), ("test", data.x_test)) if v is not None]
    what = f"examples of {fmt_dims(x.shape[1:])} {x.dtype}"
    if data.schema is not None and data.schema.kind == "table":
        what = f"examples of {x.shape[1]} features ({data.schema.describe_columns()})"
    lines = list(data.notes) + [f"data {data.path or data.name}: {', '.join(splits)} {what}"]
    task = model.task
    if task.kind == "classification":
        names = task.class_names or data.class_names or tuple(str(i) for i in range(task.classes))
        counts = np.bincount(data.y_train, minlength=task.classes)
        shown = ", ".join(f"{n} {c:,}" for n, c in list(zip(names, counts))[:12])
        more = f", ... {task.classes - 12} more" if task.classes > 12 else ""
        lines.append(f"training examples per class: {shown}{more}")
    else:
        lines.append(f"{task.targets} regression target(s) per example")
    lines.append(f"the data fits the spec {model.path}")
    return "\n".join(lines)


def _check_targets(where: str, split: str, y: np.ndarray, targets: int) -> np.ndarray:
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != targets:
        raise DataError(f"{where}: {split}targets have width {y.shape[1] if y.ndim == 2 else fmt_dims(y.shape[1:])}, "
                        f"the spec expects {targets} target(s) per example")
    if y.dtype.kind not in "uifb":
        raise DataError(f"{where}: {split}targets hold {y.dtype} values; expected numbers")
    y = y.astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        raise DataError(f"{where}: {split}targets hold NaN or inf; clean the data first")
    return y


__all__ = ["BUILTINS", "FASHION_CLASSES", "Dataset", "blobs", "check_data", "digits", "fashion_mnist",
           "load_data", "moons", "read_csv_table", "read_idx", "read_source", "spirals"]
