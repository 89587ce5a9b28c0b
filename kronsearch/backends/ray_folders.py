"""Where a local Ray session lives: one short private folder per run, removed when the run ends.

Ray puts AF_UNIX sockets below its temp dir, and a socket's path must fit in 107 bytes (103 on macOS):
<temp dir>/session_<date>_<pid>/sockets/plasma_store adds 64 bytes for a 5-digit pid. Under a TMPDIR of
/run/user/1000, or macOS's /var/folders/..., every local Ray failed to start. So the sessions live in
<system temp dir>/kronsearch-ray-<uid> when that fits, else in /tmp/kronsearch-ray-<uid>, and a run
that fits in neither is refused with the lengths. One folder per run, <pid>-<4 hex digits>, holds Ray's
session (ray/) and Tune's trial folders (tune/); backend.keep_session marks it kept (a `keep` file in it).

Both folders are made 0700; a root folder that is a link, not a folder, or another user's is refused
(in a shared /tmp, another user could plant one to read or redirect the sessions).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

from kronsearch.errors import RunFailure
from kronsearch.processes import process_alive

SOCKET_PATH_MAX = (104 if sys.platform == "darwin" else 108) - 1  # bytes, as Ray's validate_socket_filepath
KEPT = "keep"  # a file in a run folder of backend.keep_session: true (never swept)
RUN_FOLDER = re.compile(r"(\d+)-[0-9a-f]{4}")


def ray_socket_tail(pid: int) -> int:
    """Bytes Ray adds below its temp dir for its longest socket path (the plasma store's)."""
    return len(f"/session_2000-01-01_00-00-00_000000_{pid}/sockets/plasma_store")


def run_folder_fits(root: Path, pid: int) -> bool:
    """Whether Ray's socket paths fit under a run folder of this process in `root`."""
    ray_dir = root / f"{pid}-0000" / "ray"
    return len(os.fsencode(ray_dir)) + ray_socket_tail(pid) <= SOCKET_PATH_MAX


def session_root() -> Path:
    """The folder of this user's Ray sessions: under the system temp dir when Ray's sockets fit there, else under
    /tmp; RunFailure naming both lengths when they fit in neither."""
    name = f"kronsearch-ray-{os.getuid() if hasattr(os, 'getuid') else 0}"
    candidates = [Path(tempfile.gettempdir()) / name, Path("/tmp") / name]
    for root in candidates:
        if run_folder_fits(root, os.getpid()):
            return root
    need = ray_socket_tail(os.getpid()) + len(f"/{os.getpid()}-0000/ray")
    raise RunFailure(f"Ray's socket paths would pass {SOCKET_PATH_MAX} bytes under {candidates[0]} and "
                     f"{candidates[-1]} (they add {need} bytes to the folder); set TMPDIR to a folder of at most "
                     f"{SOCKET_PATH_MAX - need - len(name) - 1} bytes")


def private_folder(path: Path) -> Path:
    """`path` made (0700) or found as this user's own folder, not a link; RunFailure naming it otherwise."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise RunFailure(f"cannot make Ray's session folder {path}: {err.strerror or err}; set TMPDIR to a short "
                         f"writable folder") from None
    fix = "remove it, or set TMPDIR to a short private folder"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RunFailure(f"Ray's session folder {path} is a {'link' if stat.S_ISLNK(info.st_mode) else 'file'}, "
                         f"not a folder: {fix}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise RunFailure(f"Ray's session folder {path} belongs to another user (uid {info.st_uid}): {fix}")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def new_session_folder(root: Path, keep: bool) -> Path:
    """root/<pid>-<4 hex digits>, made 0700 (with a `keep` file for backend.keep_session: true)."""
    while True:
        folder = root / f"{os.getpid()}-{secrets.token_hex(2)}"
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        if keep:
            (folder / KEPT).touch()
        return folder


def sweep_dead_sessions(root: Path) -> list[Path]:
    """Remove the run folders of drivers that died without cleaning up (Ray can end its driver natively, e.g.
    when the raylet dies), unless they were to be kept; returns the removed ones."""
    removed = []
    for session in root.iterdir():
        match = RUN_FOLDER.fullmatch(session.name)
        if match and not (session / KEPT).exists() and not process_alive(int(match[1])):
            remove_session(session)
            removed.append(session)
    return removed


def remove_session(session: Path) -> None:
    """Delete one run's folder (Ray's session, Tune's trial folders); other runs' folders are left alone."""
    for _ in range(5):  # a stopping daemon may still write a last log line
        shutil.rmtree(session, ignore_errors=True)
        if not session.exists():
            return
        time.sleep(0.2)
