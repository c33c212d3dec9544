"""Reading array files safely: the sizes a file claims are checked before anything is allocated.

The low layer under :mod:`dnnspec.data`, :mod:`dnnspec.images` and :mod:`dnnspec.tables`
(and ``predict``'s readers): ``.npy`` and ``.npz`` without pickle, each header checked
against the file, and :func:`check_fits` against the machine's memory. It imports
nothing of dnnspec but its errors, so every reader can use it without an import loop.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


def fmt_dims(shape: tuple[int, ...]) -> str:
    """(200,) or (2, 3): how file messages show an array's shape."""
    return "(" + ", ".join(str(d) for d in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"


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


def data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file (no pickle); its header's size is checked against the file before allocating."""
    try:
        with open(path, "rb") as f:
            shape, dtype, head = _npy_header(f)
        nbytes = data_bytes(shape, dtype)
        found = path.stat().st_size - head
        if nbytes > found:
            raise DataError(f"{path}: truncated .npy file: its header claims {fmt_dims(shape)} {dtype} "
                            f"({nbytes:,} bytes) but the file holds {found:,}")
        check_fits(path, nbytes, f"the array {fmt_dims(shape)} {dtype}")
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
        nbytes = data_bytes(shape, dtype)
        if nbytes > info.file_size - head:
            raise DataError(f"{path}: array {info.filename[:-4]} claims {fmt_dims(shape)} {dtype} ({nbytes:,} bytes) "
                            f"but holds {info.file_size - head:,}; the file is truncated or corrupt")
        check_fits(path, nbytes, f"array {info.filename[:-4]} {fmt_dims(shape)} {dtype}")
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
