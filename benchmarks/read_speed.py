"""How long the read commands take (show, compare, export), against `python -c "import optuna"`.

    python benchmarks/read_speed.py                    # runs search_spaces/vit.yaml once in a temp folder
    python benchmarks/read_speed.py --folder DIR       # a folder whose studies/ already holds the study
    python benchmarks/read_speed.py --smoke            # a 2-trial, 1-epoch study, 1 round: checks it runs

Each round times, as fresh processes in the study's folder and in a rotated order: `python -c "import
optuna"` (the floor: every read command opens an Optuna storage), `kronsearch show S`, `kronsearch compare
S` and `kronsearch export S --out best.yaml`. Reported: the median seconds of each over the rounds, its
median per-round ratio to the import, and whether the command imported torch or ray (it should not: the
read commands are meant to cost an Optuna import and a storage read, issue 21's target "under 2 s").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('imported: ' + ' '.join("
         "m for m in ('torch', 'ray') if m in sys.modules) + '\\n')); from kronsearch.cli import main; "
         "sys.argv = ['kronsearch'] + sys.argv[1:]; main()")


def commands(study: str) -> dict[str, list[str]]:
    return {"import optuna": [sys.executable, "-c", "import optuna"],
            "show": [sys.executable, "-c", PROBE, "show", study],
            "compare": [sys.executable, "-c", PROBE, "compare", study],
            "export": [sys.executable, "-c", PROBE, "export", study, "--out", "best.yaml"]}


def timed(command: list[str], folder: Path) -> tuple[float, str]:
    """Seconds of one run, and what it imported of torch and ray ('' for the import baseline)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[3:]) or command[-1]} failed (exit {done.returncode}): {done.stderr.strip()}")
    imported = [line[len("imported:"):].strip() for line in done.stderr.splitlines() if line.startswith("imported:")]
    return seconds, (imported[0] if imported else "") or "neither"


def prepared(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The folder holding the study and the study's name: `--folder`, or a run of the space in `workdir`."""
    space = yaml.safe_load(Path(args.space).read_text())
    study = f"{space['name']}:{space.get('search', {}).get('strategy', 'one_round')}"
    if args.folder:
        return Path(args.folder), study
    if args.smoke:
        space["search"] = {**space.get("search", {}), "trials": 2}
        space["train"] = {**space.get("train", {}), "epochs": 1}
        space["data"] = {**space["data"], "limit": 200}
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    run = subprocess.run([sys.executable, "-m", "kronsearch", "run", "space.yaml", "--quiet"], cwd=workdir,
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"kronsearch run {args.space} failed: {run.stderr.strip()}")
    return workdir, study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "vit.yaml"))
    parser.add_argument("--folder", help="a folder whose studies/ already holds the space's study (no run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    rounds = 1 if args.smoke else args.rounds
    workdir = Path(tempfile.mkdtemp(prefix="kronsearch-read-speed-"))
    try:
        folder, study = prepared(args, workdir)
        plan = commands(study)
        seconds: dict[str, list[float]] = {name: [] for name in plan}
        imported: dict[str, set[str]] = {name: set() for name in plan}
        order = list(plan)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                s, what = timed(plan[name], folder)
                seconds[name].append(s)
                imported[name].add(what)
        base = seconds["import optuna"]
        print(f"study {study}; {rounds} round(s); {os.cpu_count()} CPUs; load average "
              f"{os.getloadavg()[0]:.1f}\n")
        print("| command | median s | median ratio to import optuna | imports torch / ray |")
        print("|---|---|---|---|")
        for name, values in seconds.items():
            ratio = statistics.median(v / b for v, b in zip(values, base))
            shown = "-" if name == "import optuna" else ", ".join(sorted(imported[name]))
            print(f"| {name} | {statistics.median(values):.2f} | {ratio:.2f} | {shown} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
