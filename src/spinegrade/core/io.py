"""Atomic, deterministic writers: an interrupted stage never leaves a finished-looking file.

Every writer writes to a temporary sibling and renames it into place. Output bytes depend
only on the content (sorted JSON keys, no timestamps), so DVC hashes are reproducible.

Temporary siblings of ``path`` are named ``.{name}.XXXXXXXX.tmp`` (files), ``.partial``
(directories, and the old tree swapped out of the way) or ``.old`` (fallback backup). A killed
writer leaves them behind; the next successful write of the same ``path`` deletes them. That
assumes one writer per path at a time, as in a DVC stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
_STALE_SUFFIXES = ("tmp", "partial", "old")


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched. The file
    gets permission bits ``mode`` (e.g. 0o600 for a secret; it is 0600 while written), by
    default those of a new file under the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask() if mode is None else mode)  # mkstemp: 0600
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    _remove_stale(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` as a whole.

    Used for outputs that are directory trees (a DICOM dataset, a set of volumes). The old
    output stays in place until the new one is complete, then the two are swapped atomically
    (see ``_swap_into_place``). On an exception ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        _swap_into_place(tmp, path)  # afterwards tmp holds the old output, if any
    finally:
        _remove(tmp)
    _remove_stale(path)


def _swap_into_place(new: Path, path: Path) -> None:
    """Move ``new`` onto ``path``, leaving the old output (if any) at ``new``.

    On Linux the swap is one atomic ``renameat2(RENAME_EXCHANGE)``: ``path`` always holds
    either the complete old or the complete new output. Where that is unsupported (another
    OS or filesystem) it falls back to two renames through a ``.old`` backup sibling; a crash
    between them leaves the old output complete at the backup name and nothing at ``path``
    (never a partial output).
    """
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    try:
        _exchange(new, path)
    except OSError as exc:
        if exc.errno not in _NO_EXCHANGE:
            raise
        backup = new.with_suffix(".old")
        os.rename(path, backup)
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(backup, path)
            raise
        os.rename(backup, new)


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap the paths ``a`` and ``b`` (both must exist).

    Raises:
        OSError: with ``errno.ENOSYS`` if ``renameat2`` is unavailable, else the call's errno.
    """
    fn = _renameat2()
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is unavailable")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """Return libc's ``renameat2``, or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _remove_stale(path: Path) -> None:
    """Delete temporary siblings of ``path`` left behind by killed writers."""
    suffixes = "|".join(_STALE_SUFFIXES)
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]+\.(?:{suffixes})")
    for sibling in path.parent.iterdir():
        if stale.fullmatch(sibling.name):
            _remove(sibling)


def _remove(path: Path) -> None:
    """Delete the file, symlink or directory tree at ``path``, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    """Write a table as CSV without the index (floats at full precision)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write one array in .npy format (deterministic bytes, unlike .npz)."""
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
