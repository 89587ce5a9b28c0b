"""What `kronsearch run` shows while it works, on a terminal (a pseudo-terminal here) and in a pipe."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from tests.test_reliability import REPO, TIMEOUT

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in(workdir, terminal: bool) -> str:
    """`kronsearch run tiny.yaml` with stdout and stderr on a pseudo-terminal or on a pipe: what it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200", "TERM": "xterm"}
    command = [sys.executable, "-m", "kronsearch", "run", "tiny.yaml"]
    if not terminal:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    main, side = pty.openpty()
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=side, stdout=side, stderr=side)
    os.close(side)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=TIMEOUT) == 0, out.decode(errors="replace")
    return ANSI.sub("", out.decode(errors="replace"))


def test_a_terminal_gets_a_live_bar_per_phase_and_a_line_per_trial_with_the_studys_standing(write_space, workdir):
    write_space()
    shown = run_in(workdir, terminal=True)
    assert re.search(r"select .*━+ 0/1", shown) and re.search(r"train .*━+ 0/3", shown)  # the bar, per phase
    assert "trial 0 epoch" not in shown  # no plain lines under the bar
    assert re.search(r"trial 0 one_round: val 0\.\d+.*\[1/2 done, best val 0\.\d+\]", shown)
    assert re.search(r"trial 1 one_round: val 0\.\d+.*\[2/2 done, best val 0\.\d+\]", shown)


def test_a_pipe_gets_plain_lines_per_epoch_and_no_bar(write_space, workdir):
    write_space()
    shown = run_in(workdir, terminal=False)
    assert "\x1b[" not in shown and "━" not in shown
    assert re.search(r"trial 0 epoch 1/2 \(select\): val 0\.\d+; racing .*; \d+s, about \d+s left", shown)
    assert "[2/2 done, best val 0." in shown
