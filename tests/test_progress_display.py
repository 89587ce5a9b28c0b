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
    # the bar, per phase; the race's counts up to its cap (the race may extend itself to 2x its steps)
    assert re.search(r"select .*━+ 0/2", shown) and re.search(r"train .*━+ 0/3", shown)
    assert "(select):" not in shown and "(train):" not in shown  # no plain lines under the bar
    assert re.search(r"trial 0 one_round: val 0\.\d+.*\[1/2 done, best val 0\.\d+\]", shown)
    assert re.search(r"trial 1 one_round: val 0\.\d+.*\[2/2 done, best val 0\.\d+\]", shown)


def test_the_terminal_bar_carries_what_the_piped_lines_carry(write_space, workdir):
    write_space(search={"trials": 2})
    shown = run_in(workdir, terminal=True)
    # trial 1 trains a plan of trial 0's race (search.races: per_rank): one epoch, no race
    assert re.search(r"trial 0 epoch 1/2 select ━+ 0/2", shown) and re.search(r"trial 1 epoch 1/1 train ━+", shown)
    assert re.search(r"trial 0 epoch 2/2 train ━+ \d/3 [-:\d]+ val 0\.\d+; racing .*; \d+s, about \d+s left "
                     r"\(study: about \d+s\)", shown)


def test_a_pipe_gets_plain_lines_per_epoch_and_no_bar(write_space, workdir):
    write_space()
    shown = run_in(workdir, terminal=False)
    assert "\x1b[" not in shown and "━" not in shown
    assert re.search(r"trial 0 epoch 1/2 \(select\): val 0\.\d+; racing .*; \d+s, about \d+s left", shown)
    assert "[2/2 done, best val 0." in shown


def test_the_study_s_time_left_counts_the_later_trials_at_the_finished_ones_mean():
    from kronsearch.progress import StudyClock

    assert StudyClock(later=2, mean=30.0).left(trial_elapsed=5, trial_left=15) == 75
    assert StudyClock(later=2).left(trial_elapsed=5, trial_left=15) == 55  # none finished: this trial's length


def test_a_trial_with_none_after_it_says_no_study_time():
    from kronsearch.progress import StudyClock, epoch_status

    assert "study" not in epoch_status(1, 4, 0.5, "", 10.0, StudyClock(later=0))
    assert epoch_status(1, 4, 0.5, "", 10.0, StudyClock(later=3, mean=100.0)).endswith(
        "10s, about 30s left (study: about 5m30s)")
