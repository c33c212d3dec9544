"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace``.

A reader never sees a half-written checkpoint, model or figure, and an interrupted write
leaves the previous file intact. Failures a user can fix (missing folder, no
permission, a folder where a file should be) raise a one-line ``UsageError``.

The temporary file of ``folder/name`` is ``folder/.name.XXXXXXXX.tmp``. A process killed
while writing (SIGKILL, power loss) leaves it behind; :func:`remove_temporaries` deletes
those of given names (the trainer does it for its run files at the start of a run).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from .errors import UsageError

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object], *,
                 make_parents: bool = False) -> Path:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it over ``path``.

    make_parents: create missing folders (run folders); otherwise a missing folder is
    the user's mistake and is reported as such.
    """
    path = Path(path)
    folder = path.parent
    if make_parents:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write {path}: cannot create the folder {folder} ({e.strerror})") from None
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: the folder {folder} does not exist; create it or choose another path")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder; give a file name inside it")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise UsageError(f"cannot write {path}: cannot create a file in {folder} ({e.strerror}); "
                         "check the folder's write permission or choose another path") from None
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; a model must be readable like any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """The leftover temporary files of :func:`atomic_write` for ``folder/name``, each name in ``names``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for name in names for p in folder.glob(f".{glob.escape(name)}.*{TEMP_SUFFIX}") if p.is_file())


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the leftover temporaries of ``names`` in ``folder`` (see :func:`temporaries`); return them.

    Only for a folder no other process is writing those names into: a temporary that is being
    written looks the same as one a killed process left.
    """
    removed = []
    for p in temporaries(folder, names):
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UsageError(f"cannot remove the stale temporary file {p}: {e.strerror or e}; delete it by hand") \
                from None
        removed.append(p)
    return removed


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the process umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), make_parents=make_parents)


def atomic_write_text(path: str | os.PathLike, text: str, *, make_parents: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), make_parents=make_parents)
