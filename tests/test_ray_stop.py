"""The Ray driver's StopDeadline (kronsearch.backends.ray_stop), without Ray: a fake node whose raylet is a `sleep`.
It ends the process, so each test runs it in a child Python and reads its exit code and stderr."""

from __future__ import annotations

import subprocess
import sys

from kronsearch.backends.ray_watch import ABRUPT

DRIVER = """
import subprocess, sys, time
from types import SimpleNamespace
from kronsearch.backends.ray_stop import StopDeadline

raylet = subprocess.Popen(["sleep", "60"])
killed = []
node = SimpleNamespace(all_processes={"raylet": [SimpleNamespace(process=raylet)]},
                       kill_all_processes=lambda **kwargs: killed.append(kwargs))
deadline = StopDeadline(lambda why: print("abandon:", why, flush=True) or [3], lambda: print("released", flush=True),
                        lambda: "stopped by SIGTERM")
deadline.node = node
watched = deadline.raylet_watched()
watched.__enter__()
""".strip()


def run_driver(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER + "\n" + script], capture_output=True, text=True, timeout=60)


def test_a_raylet_that_dies_without_a_sigterm_ends_the_run_with_the_abrupt_line_and_exit_1():
    done = run_driver("raylet.kill(); time.sleep(30)")
    assert done.returncode == 1, done.stderr
    assert done.stdout == f"abandon: {ABRUPT}\nreleased\n"
    assert done.stderr == f"error: {ABRUPT}; trials [3] marked interrupted; re-run the same command to resume\n"


def test_a_raylet_that_dies_as_a_sigterm_arrives_leaves_the_ending_to_the_sigterm_deadline_exit_143():
    done = run_driver("raylet.kill(); time.sleep(0.3); deadline.start(); time.sleep(30)")
    assert done.returncode == 143, done.stderr
    assert done.stdout.splitlines() == ["abandon: stopped by SIGTERM", "released"]
    assert done.stderr.startswith("error: terminated (SIGTERM): interrupted;")


def test_a_raylet_stopped_after_the_watch_ends_as_ray_shuts_down_ends_nothing():
    done = run_driver("watched.__exit__(None, None, None); raylet.kill(); time.sleep(3); print('still here')")
    assert (done.returncode, done.stdout, done.stderr) == (0, "still here\n", "")

