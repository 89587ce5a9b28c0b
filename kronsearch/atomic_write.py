"""Atomic file writes that replace only regular files.

write_atomic writes into a temporary file in the target's folder, fsyncs it, then os.replace-s it into place, so
an existing file is either fully replaced or left untouched, and a link planted as the file is swapped, never
written through. An existing path that is not a regular file (a device such as /dev/null, a FIFO, a socket, a
folder) is never replaced: os.replace would swap a device node for a plain file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from kronsearch.layers.errors import BadInput


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file via write(f) into a temp file in the same folder, fsync, then os.replace it into place.

    An existing file at `path` is either fully replaced or left untouched. An existing path that is not a regular
    file (a device such as /dev/null, a FIFO, a socket, a folder; through a link too) is never replaced: NotAFile.
    """
    path = Path(path)
    try:
        found = path.stat()
    except FileNotFoundError:  # nothing there, or a dangling link (os.replace swaps the link, never its target)
        found = None
    except OSError as err:
        raise NotAFile(f"{path} cannot be checked before writing ({err.strerror or err}); nothing was written") from err
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise NotAFile(f"{path} exists and is {_kind(found.st_mode)}, not a regular file; kronsearch never replaces "
                       f"it: give the path of a new or a regular file")
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = found.st_mode & 0o777 if found is not None else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


class NotAFile(BadInput):
    """A write to an existing path that is not a regular file (write_atomic)."""


def _kind(mode: int) -> str:
    """'a character device', 'a FIFO', ... for a stat mode."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
