"""Image files and image folders: PNG, JPEG, BMP, GIF (and TIFF, WebP) through Pillow.

    folder = list_folder("photos/")                       # splits, classes, files; nothing decoded
    x = decode_all(folder.files, (3, 32, 32), "fit")      # uint8 (N, 3, 32, 32), in parallel, cached
    img = read_image("cat.png", (1, 28, 28))              # one image, (1, 28, 28) uint8

An image folder holds one subfolder per class (``photos/cat/*.png``), or ``train/``
(required), ``val/`` and ``test/`` folders that each hold such class folders. Files are
found recursively inside a class folder; hidden files and files of other types are left
out. Every image is converted to the spec's channels (``L`` for 1, ``RGB`` for 3, ``RGBA``
for 4; a palette or alpha channel is converted by Pillow) and must have the spec's size,
unless ``resize`` says how to reach it:

- ``fit``: stretched to the size (the aspect ratio may change);
- ``crop``: scaled to cover the size, then the centre cut out (Keras' ``crop_to_aspect_ratio``);
- ``pad``: scaled to fit inside, then centred on black (``pad_to_aspect_ratio``).

Decoding (:func:`decode_all`) runs in a thread pool (Pillow releases the GIL while it
decodes) with a progress bar on a terminal, into one preallocated uint8 array. The result
is cached as an ``.npz`` in ``$DNNSPEC_CACHE`` (default ``~/.cache/dnnspec/images``;
``DNNSPEC_CACHE=off`` turns it off), keyed by a digest of every file's path, size and
modification time and the options, so a changed, added or removed file decodes afresh.
Every image's header is checked (:func:`open_checked`) before its pixels are decoded: at
most :data:`MAX_PIXELS` pixels, the guard against decompression bombs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
#: The most pixels an image may have: its header is checked before decoding (a decompression bomb
#: claims gigapixels in a few bytes). 64 Mpx is an 8000 x 8000 photo; Pillow's own limit is 179 Mpx.
MAX_PIXELS = 1 << 26
#: Files per task of the decoding pool: large enough that the pool's overhead is small.
CHUNK = 64
CACHE_VERSION = 1


def pillow() -> Any:
    """PIL.Image, or UsageError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'dnnspec[images]'") from None
    return Image


# --- one image ------------------------------------------------------------------------------------


def open_checked(path: Path, expect: str = "") -> Any:
    """An open Pillow image (its header read, its pixels not decoded); DataError for a file Pillow refuses.

    Pillow refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` (a decompression
    bomb claims gigapixels in a few bytes); ``expect`` is added to that message.
    """
    Image = pillow()
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode ({e}){expect}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # Pillow's plugins raise these
        raise DataError(f"{path}: cannot read image ({e}); remove or replace the file") from None


def check_pixels(img: Any, path: Path) -> None:
    """DataError for an image of more than MAX_PIXELS pixels, before it is decoded to be resized."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DataError(f"{path}: image of {w}x{h} pixels is over the {MAX_PIXELS:,} pixels dnnspec decodes; "
                        f"make it smaller first")


def convert(img: Any, shape: Sequence[int], resize: str = "") -> np.ndarray:
    """Decode ``img`` to ``(H, W, C)`` uint8 at ``shape`` = (C, H, W), resized as ``resize`` says."""
    c, h, w = shape
    if resize and img.format == "JPEG" and (img.size[0] > 2 * w and img.size[1] > 2 * h):
        img.draft(MODES[c], (w, h))  # JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least (w, h): much faster
    if img.mode != MODES[c]:
        img = img.convert(MODES[c])  # else np.asarray decodes it as it is: no copy
    if img.size != (w, h):
        from PIL import ImageOps

        method = pillow().Resampling.BILINEAR
        if resize == "fit":
            img = img.resize((w, h), method)
        elif resize == "crop":
            img = ImageOps.fit(img, (w, h), method)
        elif resize == "pad":
            img = ImageOps.pad(img, (w, h), method, color=0)
    return np.asarray(img).reshape(h, w, c)


def read_image(path: str | os.PathLike, shape: Sequence[int], resize: str = "") -> np.ndarray:
    """One image file as ``(C, H, W)`` uint8 for a model taking image[C, H, W]; its size must match unless resized."""
    path = Path(path)
    if len(shape) != 3 or shape[0] not in MODES:
        raise DataError(f"{path}: the model's input ({', '.join(map(str, shape))}) is not a 1-, 3- or 4-channel image")
    c, h, w = shape
    with _quiet():
        with open_checked(path, f"; the model expects {w}x{h} pixels") as img:
            if not resize and img.size != (w, h):
                raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]} pixels but the model expects {w}x{h} "
                                f"(width x height); resize it first, or add resize=fit|crop|pad")
            check_pixels(img, path)
            try:
                arr = convert(img, shape, resize)
            except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
                raise DataError(f"{path}: cannot read image ({e}); remove or replace the file") from None
    return arr.transpose(2, 0, 1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Pillow's warnings about large images and damaged metadata: the size is checked here, and one line says more.

    The filter is global, so worker threads started inside see it too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- folders ------------------------------------------------------------------------------------


@dataclass
class Folder:
    """An image folder as listed: files and class indices per split, class names, files left out."""

    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: int = 0

    @property
    def files(self) -> list[Path]:
        return [f for s in SPLITS for f in self.splits.get(s, [])]


def is_image_folder(path: Path) -> bool:
    """True when ``path`` holds an image anywhere below it (a quick look: stops at the first)."""
    for _, _, files in os.walk(path):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return True
    return False


def list_folder(root: str | os.PathLike, class_names: Sequence[str] = (), classes: int | None = None) -> Folder:
    """List an image folder (see the module docstring); nothing is opened.

    ``class_names``: the spec's (or a trained model's) names, matched to folder names;
    else the sorted folder names of the training split, which must number ``classes``.
    """
    root = Path(root)
    subdirs = _subdirs(root)
    layout = {s: root / s for s in SPLITS if s in subdirs} if "train" in subdirs and set(subdirs) <= set(SPLITS) \
        else {"train": root}
    found = {s: _class_dirs(folder) for s, folder in layout.items()}
    names = tuple(class_names) or tuple(sorted(found["train"]))
    if not class_names and classes is not None and len(names) != classes:
        raise DataError(f"{root}: the data has {len(names)} classes ({_show(names)}), one folder each; "
                        f"the spec says classes {classes}")
    folder = Folder(root, names)
    for split, dirs in found.items():
        files, labels = [], []
        for name in sorted(dirs):
            if name not in names:
                raise DataError(f"{layout[split] / name}: a class folder the spec does not name; its classes are "
                                f"{_show(names)}" + _did_you_mean(name, names))
            got, skipped = _images_below(layout[split] / name)
            folder.skipped += skipped
            files += got
            labels += [names.index(name)] * len(got)
        if not files:
            example = layout[split] / (names[0] if names else "cat")
            raise DataError(f"{layout[split]}: holds no images (PNG, JPEG, BMP, GIF) in class folders; put each "
                            f"image in a folder named after its class, e.g. {example}/")
        folder.splits[split] = files
        folder.labels[split] = np.asarray(labels, dtype=np.int64)
    return folder


def _show(names: Sequence[str], limit: int = 12) -> str:
    more = f", ... {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean '{close[0]}'?" if close else "; rename the folder or name it in the spec's classes"


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror})") from None


def _class_dirs(folder: Path) -> list[str]:
    dirs = _subdirs(folder)
    loose = [e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
    if loose and not dirs:
        raise DataError(f"{folder}: the images lie directly in the folder; put each in a subfolder named after its "
                        f"class ({folder}/cat/{loose[0]}, ...)")
    if loose:
        raise DataError(f"{folder / sorted(loose)[0]}: an image outside the class folders; move it into one")
    return dirs


def _images_below(folder: Path) -> tuple[list[Path], int]:
    """(sorted image files below ``folder``, count of other files left out); hidden entries skipped."""
    files, skipped = [], 0
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                files.append(Path(top) / name)
            else:
                skipped += 1
    return files, skipped


def images_in(paths: Sequence[Path]) -> list[Path]:
    """Every image file below the folders (sorted) and the files themselves, in order: what predict reads."""
    out: list[Path] = []
    for p in paths:
        out += _images_below(p)[0] if p.is_dir() else [p]
    return out


# --- decoding many files ----------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What the workers found besides pixels: files of another size, files that would not decode."""

    other_size: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def decode_all(files: Sequence[Path], shape: Sequence[int], resize: str = "", where: str | Path = "",
               workers: int | None = None, cache: bool = True, progress: bool | None = None) -> np.ndarray:
    """Every file as uint8 ``(N, C, H, W)``: from the cache, or decoded in parallel (then cached).

    Without ``resize`` every image must have the spec's size: otherwise one DataError says how
    many do not, with an example. A file that does not decode is named (the first, and how many).
    """
    from .datafiles import check_fits

    c, h, w = (int(d) for d in shape)
    if c not in MODES:
        raise DataError(f"{where}: the spec's input image[{c}, {h}, {w}] has {c} channels; images have 1 (grey), "
                        f"3 (RGB) or 4 (RGBA)")
    check_fits(where, len(files) * c * h * w, f"{len(files):,} images of {c}x{h}x{w}")
    key = cache_key(files, (c, h, w), resize, where) if cache else None
    cached = _cache_read(key, len(files), (c, h, w)) if key else None
    if cached is not None:
        return cached
    out = np.empty((len(files), c, h, w), np.uint8)
    outcome = _decode_into(out, files, (c, h, w), resize, workers, progress, where)
    _raise_problems(outcome, len(files), (c, h, w), where)
    if key:
        _cache_write(key, out)
    return out


def _decode_into(out: np.ndarray, files: Sequence[Path], shape: tuple[int, int, int], resize: str,
                 workers: int | None, progress: bool | None, where: str | Path) -> _Outcome:
    pillow()
    outcome = _Outcome()
    chunks = [range(i, min(i + CHUNK, len(files))) for i in range(0, len(files), CHUNK)]

    def work(chunk: range) -> int:
        for i in chunk:
            _decode_one(out, i, files[i], shape, resize, outcome)
        return len(chunk)

    workers = workers or min(32, os.cpu_count() or 1)
    bar = _bar(len(files), where, progress)
    with _quiet(), ThreadPoolExecutor(max_workers=workers) as pool:
        for done in as_completed([pool.submit(work, ch) for ch in chunks]):
            bar(done.result())
    bar(0, close=True)
    return outcome


def _decode_one(out: np.ndarray, i: int, path: Path, shape: tuple[int, int, int], resize: str,
                outcome: _Outcome) -> None:
    """Decode file ``path`` into ``out[i]``, or record why not (another size, or unreadable)."""
    c, h, w = shape
    try:
        with open_checked(path) as img:
            if not resize and img.size != (w, h):
                with outcome.lock:
                    outcome.other_size.append((path, img.size))
                return
            check_pixels(img, path)
            out[i] = convert(img, shape, resize).transpose(2, 0, 1)
    except DataError as e:
        with outcome.lock:
            outcome.failed.append((path, str(e)))
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # truncated data, bad chunks
        with outcome.lock:
            outcome.failed.append((path, f"{path}: cannot read image ({e}); remove or replace the file"))


def _raise_problems(outcome: _Outcome, n: int, shape: tuple[int, int, int], where: str | Path) -> None:
    if outcome.failed:
        path, message = min(outcome.failed)
        more = f" ({len(outcome.failed)} of {n:,} files could not be read)" if len(outcome.failed) > 1 else ""
        raise DataError(message + more)
    if outcome.other_size:
        c, h, w = shape
        path, (pw, ph) = min(outcome.other_size)
        raise DataError(f"{where}: {len(outcome.other_size):,} of {n:,} images are not {w}x{h} (width x height) "
                        f"as the spec's image[{c}, {h}, {w}] says (e.g. {path} is {pw}x{ph}); add resize=fit, "
                        f"resize=crop or resize=pad to the data source, or resize the files")


def _bar(total: int, where: str | Path, show: bool | None) -> Callable[..., None]:
    """A tqdm bar on stderr when it is a terminal (``show`` None) or when asked; a no-op otherwise."""
    if show is False or (show is None and not sys.stderr.isatty()) or total < 2 * CHUNK:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", desc=f"decoding {where}", file=sys.stderr, leave=False,
               dynamic_ncols=True, mininterval=0.1)

    def update(n: int, close: bool = False) -> None:
        bar.close() if close else bar.update(n)

    return update


# --- the cache ------------------------------------------------------------------------------------


def cache_dir() -> Path | None:
    """``$DNNSPEC_CACHE`` (``off``: no cache), else ``$XDG_CACHE_HOME/dnnspec/images``, ``~/.cache/dnnspec/images``."""
    env = os.environ.get("DNNSPEC_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no", "none") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dnnspec" / "images"


def cache_key(files: Sequence[Path], shape: tuple[int, int, int], resize: str, root: str | Path = "") -> str | None:
    """``<folder digest>-<content digest>``: the folder, shape and resize mode; then every file's path, size, mtime.

    A new entry of a folder replaces its older ones (same first part), so the cache holds
    one decoded copy per folder and option set.
    """
    if cache_dir() is None:
        return None
    options = f"dnnspec-images {CACHE_VERSION} {os.path.abspath(root)} {shape} {resize}\n".encode()
    digest = hashlib.sha256(options)
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            return None  # vanished: decoding will say so
        digest.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{hashlib.sha256(options).hexdigest()[:12]}-{digest.hexdigest()[:28]}"


def _cache_file(key: str) -> Path:
    return cache_dir() / f"{key}.npz"  # type: ignore[operator]


def _cache_read(key: str, n: int, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The cached array for ``key``, or None when there is none or it is damaged (then it is decoded again)."""
    from .datafiles import read_npz_arrays

    path = _cache_file(key)
    if not path.is_file():
        return None
    try:
        x = read_npz_arrays(path, lambda names: ["x"] if "x" in names else [])["x"]
    except (DataError, KeyError):
        return None
    if x.dtype != np.uint8 or x.shape != (n, *shape):
        return None
    return x


def _cache_write(key: str, x: np.ndarray) -> None:
    """Write the entry atomically and drop the folder's older entries; a cache that cannot be written is skipped."""
    from .fileio import atomic_write

    path = _cache_file(key)
    try:
        atomic_write(path, lambda f: np.savez(f, x=x), make_parents=True)
        for old in path.parent.glob(key.split("-")[0] + "-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except (UsageError, OSError):
        pass  # only a speed-up: a read-only home still trains


def folder_summary(folder: Folder) -> str:
    """``300 training, 60 test images in 3 classes (cat, dog, fish)``."""
    parts = [f"{len(folder.splits[s]):,} {'training' if s == 'train' else 'validation' if s == 'val' else 'test'}"
             for s in SPLITS if s in folder.splits]
    return f"{', '.join(parts)} images in {len(folder.class_names)} classes ({_show(folder.class_names)})"


__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "MODES", "SPLITS", "Folder", "cache_dir", "cache_key", "check_pixels",
           "convert", "decode_all", "folder_summary", "images_in", "is_image_folder", "list_folder", "open_checked",
           "read_image"]
