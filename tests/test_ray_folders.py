"""Where a local Ray session lives (issue 31 item 8): a short private folder, so Ray's socket paths fit in 107
bytes whatever TMPDIR is, and never a folder planted by someone else."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from kronsearch.backends.ray_folders import (
    SOCKET_PATH_MAX,
    new_session_folder,
    private_folder,
    ray_socket_tail,
    session_root,
)
from kronsearch.errors import RunFailure
from tests.test_reliability import TIMEOUT, python  # noqa: F401 - python is a fixture

pytestmark = pytest.mark.xdist_group("ray")  # starts Ray: one worker runs every Ray file (tests/conftest.py)

LONG = "/tmp/" + "a-long-temp-dir-" * 4  # as /run/user/1000 or macOS's /var/folders/xy/.../T/, only longer


@pytest.fixture
def temp_dir(monkeypatch: pytest.MonkeyPatch):
    """set(path): the system temp dir this process sees (tempfile.gettempdir) is `path` for the test."""
    return lambda path: monkeypatch.setattr(tempfile, "tempdir", str(path))


def test_sessions_stay_under_a_short_temp_dir(temp_dir):
    temp_dir("/scratch")
    assert session_root() == Path(f"/scratch/kronsearch-ray-{os.getuid()}")


def test_under_a_long_temp_dir_sessions_move_to_a_short_folder_where_rays_sockets_fit(temp_dir):
    temp_dir(LONG)
    root = session_root()
    assert root == Path(f"/tmp/kronsearch-ray-{os.getuid()}")
    socket = f"{root}/{os.getpid()}-abcd/ray/session_2026-12-07_11-26-49_123456_{os.getpid()}/sockets/plasma_store"
    assert len(socket) <= SOCKET_PATH_MAX
    assert len(f"{LONG}/kronsearch-ray/run-{os.getpid()}-abcd/ray") + ray_socket_tail(os.getpid()) > SOCKET_PATH_MAX


def test_a_root_folder_is_private_even_when_it_existed(tmp_path):
    root = tmp_path / "sessions"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    assert private_folder(root) == root and root.stat().st_mode & 0o777 == 0o700
    assert new_session_folder(root, keep=False).stat().st_mode & 0o777 == 0o700


def test_a_root_folder_planted_as_a_link_is_refused_untouched(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "sessions").symlink_to(target)
    with pytest.raises(RunFailure, match="is a link, not a folder"):
        private_folder(tmp_path / "sessions")
    assert list(target.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_root_folder_of_another_user_is_refused(tmp_path):
    root = tmp_path / "sessions"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(RunFailure, match=r"belongs to another user \(uid 65534\)"):
        private_folder(root)


@pytest.mark.slow  # starts Ray in a fresh process, about 25 s; CI runs it (-m slow)
def test_a_ray_run_works_under_a_long_temp_dir_and_leaves_no_session_folder(write_space, workdir, python):
    write_space(search={"trials": 1}, backend={"name": "ray", "max_concurrent": 1})
    long = Path(LONG)
    long.mkdir(exist_ok=True)
    root = Path(f"/tmp/kronsearch-ray-{os.getuid()}")
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        proc = python("import sys, runpy; sys.argv = ['kronsearch', 'run', 'tiny.yaml', '--quiet']; "
                      "runpy.run_module('kronsearch', run_name='__main__')", TMPDIR=LONG, RAY_AUTH_MODE="disabled")
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err[-3000:]
        assert "1 trial finished" in out
        deadline = time.monotonic() + 5
        while set(root.iterdir()) - before and time.monotonic() < deadline:  # removed as the run ends
            time.sleep(0.2)
        assert set(root.iterdir()) - before == set()
    finally:
        shutil.rmtree(long, ignore_errors=True)
