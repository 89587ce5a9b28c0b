"""The benchmark scripts run end to end (no timing assertions: CI machines are noisy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs a benchmark script (5-18 s each); CI runs them

ROOT = Path(__file__).resolve().parents[1]


def test_layer_speed_smoke():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "layer_speed.py"), "--smoke", "--batch", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| out x in"))
    assert "time ratio" in lines[header] and "MAC ratio" in lines[header]
    assert re.fullmatch(r"\|(---\|)+", lines[header + 1])
    rows = [line for line in lines[header + 2:] if line.startswith("|")]
    shapes = [row.split("|")[1:4] for row in rows]
    assert [[cell.strip() for cell in shape] for shape in shapes] == [
        ["1024 x 1024", "32x32", "2"], ["768 x 192", "16x16", "1"],
        ["192 x 768", "16x16", "1"], ["3072 x 768", "16x16", "1"],
    ]
    mac_ratios = [float(row.split("|")[7]) for row in rows]
    assert mac_ratios == [0.125, 0.083, 0.083, 0.068]


def test_bsr_inference_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bsr_inference.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (s, b) for s in ("50%", "75%", "90%") for b in ("1", "256")]
    assert all(float(r[-1]) > 0 for r in rows)  # the BSR / dense time ratio
    assert "Warning" not in result.stderr


def test_data_paths_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_paths.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| digits")]
    assert [(r[0].strip(), r[2].strip()) for r in rows] == [("digits", "64"), ("digits", "256")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 and float(r[6]) > 0 for r in rows)  # epoch s per path, ratio


def test_init_dense_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "init_dense.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith(("| mlp", "| lenet5"))]
    assert [(r[0], r[1], r[4]) for r in rows] == [
        (m, p, i) for m in ("mlp", "lenet5")
        for p, i in [("dense (reference, seed 0)", "-"), ("one round", "dense"), ("one round", "random"),
                     ("4x4", "dense"), ("4x4", "random")]]
    picks = [r[9] for r in rows if r[1] == "one round"]
    assert all(re.fullmatch(r"\d+x\d+", p) for p in picks[:2])  # the MLP's one hidden layer
    assert all(re.fullmatch(r"\d+x\d+/\d+x\d+", p) for p in picks[2:])  # LeNet-5's fc1/fc2


def test_inference_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert [tuple(c.strip() for c in r[:5]) for r in rows] == [
        ("mlp", "8x8", "1", "90%", "1"), ("mlp", "8x8", "1", "90%", "32"), ("vit", "16x16", "1", "90%", "1")]
    assert all(float(r[10]) > 0 for r in rows)  # the new form / dense time ratio
    assert "Warning" not in result.stderr


def test_one_round_hooks_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "one_round_hooks.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert re.search(r"hooks / explicit: median \d+\.\d{3}", result.stdout)
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| float32", "| bf16 autocast"))]
    assert len(rows) == 2 and "step time bf16 / float32:" in result.stdout


def test_read_speed_smoke_times_each_read_command_against_importing_optuna_and_says_what_it_imported():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "read_speed.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = {r[0].strip(): [c.strip() for c in r[1:]] for r in
            (line.split("|")[1:-1] for line in result.stdout.splitlines()
             if line.startswith("| ") and "---" not in line)}
    assert list(rows) == ["command", "import optuna", "show", "compare", "export"]
    assert rows["import optuna"][1] == "1.00"
    assert rows["show"][2] == rows["compare"][2] == "neither"  # the read commands import no torch and no ray


def test_gpu_check_without_cuda_says_so_per_part_and_exits_3():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["main", "paths", "bf16", "inference", "ray"]
    assert all("NOT RUN: no CUDA" in line for line in lines[:-1]) and "not run" in lines[-1]


def test_gpu_check_on_the_cpu_passes_its_layer_parts():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                             "--skip", "main", "ray"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[:3]] == [
        ["paths", "PASS"], ["bf16", "PASS"], ["inference", "PASS"]]


def test_read_scale_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "read_scale.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| sqlite")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("sqlite", "20")]
    assert all("x)" in cell for cell in rows[0][4:])  # each command's ratio to Optuna's load
