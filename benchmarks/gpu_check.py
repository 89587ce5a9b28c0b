"""A prepared GPU check: does kronsearch work on CUDA? One part per concern, each with a clear PASS or FAIL.

    python benchmarks/gpu_check.py                  # every part on cuda (a few minutes on one GPU)
    python benchmarks/gpu_check.py --skip ray       # without the Ray part
    python benchmarks/gpu_check.py --device cpu     # the same checks on the CPU: checks the script itself

Parts:
- main job: `kronsearch run` of a tiny digits search (one_round, 2 trials) with train.device cuda, then export
  of its pick with weights; the exported weights are on the CPU and load into the rebuilt model;
- compute paths: KronLinear's paths (factored, order1, order2, merged, and "auto") and PatternSelectLinear's
  (factored, merged, "auto") on the device against the same layer in float64 on the CPU: forward and every
  gradient;
- bf16 autocast: KronLinear and PatternSelectLinear forward and backward under torch.autocast(bfloat16), each
  compute mode: finite, and close to float32 (relative error under 3e-2); the output's dtype is reported (on
  the CPU the factored path returns float32: its bias add promotes the bf16 product);
- inference paths: for_inference with each path (factored, sparse, merged, product, and auto's timing on the
  device) and BSRLinear.from_kron, against the trained model's own output;
- ray: a 2-trial Ray search with resources_per_trial {cpu: 1, gpu: 1} and train.device auto: both trials
  complete, each with a GPU reserved (Ray gives the trial that GPU alone).

Exit status: 0 every part passed, 1 a part failed, 3 no CUDA on this machine (each part says so; nothing ran).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from kronsearch import KronLinear, PatternSelectLinear, for_inference  # noqa: E402
from kronsearch.layers.compute import PATHS, kron_linear  # noqa: E402
from kronsearch.layers.inference import INFERENCE_PATHS  # noqa: E402
from kronsearch.layers.kron_linear import BSRLinear  # noqa: E402

NO_CUDA = 3
PARTS = ("main", "paths", "bf16", "inference", "ray")
SPACE = {
    "name": "gpucheck", "seed": 0, "data": {"name": "digits", "limit": 300},
    "model": {"name": "mlp", "options": {"hidden": [64]}, "include": ["layers.*"]},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    "search": {"strategy": "one_round", "trials": 2, "sampler": "random", "pruner": "none"},
    "space": {"blocks": ["2x2", "4x4", "8x8"], "ranks": [1, 2], "lambda2": {"low": 1e-5, "high": 1e-3, "log": True}},
}


class CheckFailed(AssertionError):
    """A part's check that did not hold; the message says which and by how much."""


def close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float) -> None:
    """Relative error of `got` against `want` (their largest entry) under rtol, else CheckFailed."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{what}: not finite")
    error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    if error > rtol:
        raise CheckFailed(f"{what}: relative error {error:.2e} > {rtol:.0e}")


def layers() -> list[tuple[str, torch.nn.Module]]:
    """A KronLinear and a PatternSelectLinear with random factors (float64, CPU), S away from 0."""
    torch.manual_seed(0)
    kron = KronLinear(64, 32, (4, 8), rank=2)
    select = PatternSelectLinear(64, 32, [(2, 2), (4, 8), (8, 8)], rank=1)
    for layer in (kron, select):
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn_like(p))
    return [("KronLinear", kron.double()), ("PatternSelectLinear", select.double())]


def output_and_grads(module: torch.nn.Module, x: torch.Tensor, forward: Callable | None = None) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = (forward or module)(x)
    g = torch.ones_like(y)
    return [y, *torch.autograd.grad(y, [x, *module.parameters()], g)]


def terms_of(layer: torch.nn.Module) -> list:
    branches = layer.branches.values() if isinstance(layer, PatternSelectLinear) else [layer]
    return [(b.factors(), b.b, b.order) for b in branches]


def check_paths(device: str) -> str:
    x = torch.randn(16, 64, dtype=torch.float64)
    checked = []
    for name, layer in layers():
        want = output_and_grads(layer, x)
        on = layer.to(device)
        paths = [p for p in PATHS if name == "KronLinear" or p in ("factored", "merged")]
        for path in paths:
            got = output_and_grads(on, x.to(device), lambda v, on=on, path=path: kron_linear(
                v, terms_of(on), on.bias, path))
            for index, (a, b) in enumerate(zip(got, want)):
                close(a, b, f"{name} {path} {'output' if index == 0 else f'gradient {index}'}", 1e-9)
            checked.append(f"{name}:{path}")
        on.compute = "auto"
        for index, (a, b) in enumerate(zip(output_and_grads(on, x.to(device)), want)):
            close(a, b, f"{name} auto {'output' if index == 0 else f'gradient {index}'}", 1e-9)
        checked.append(f"{name}:auto")
        layer.to("cpu")
    return f"{len(checked)} paths agree with float64 on the CPU ({', '.join(checked)})"


def check_bf16(device: str) -> str:
    x = torch.randn(32, 64)
    checked = []
    for name, layer in layers():
        layer = layer.float().to(device)
        for mode in ("factored", "merged", "auto"):
            layer.compute = mode
            want = output_and_grads(layer, x.to(device))
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
                got = output_and_grads(layer, x.to(device))
            for index, (a, b) in enumerate(zip(got, want)):
                close(a, b, f"{name} {mode} bf16 {'output' if index == 0 else f'gradient {index}'}", 3e-2)
            checked.append(f"{name}:{mode} -> {str(got[0].dtype).removeprefix('torch.')}")
    return f"bf16 autocast forward and backward within 3e-2 of float32 (output dtype: {', '.join(checked)})"


def check_inference(device: str) -> str:
    torch.manual_seed(1)
    model = torch.nn.Sequential(KronLinear(64, 64, (8, 8), rank=2), torch.nn.ReLU(), KronLinear(64, 16, (4, 4)))
    model = model.to(device)
    with torch.no_grad():
        model[0].s.mul_((torch.rand_like(model[0].s) > 0.5).float())  # half the blocks exactly 0
        x = torch.randn(8, 64, device=device)
        want = model.eval()(x)
        checked = []
        for path in (*INFERENCE_PATHS, "auto"):
            if path == "sparse" and device.startswith("cuda") and not hasattr(torch, "sparse_bsr"):
                continue
            fast = for_inference(model, batch_sizes=[8], path=path)
            close(fast(x), want, f"for_inference {path}", 1e-4)
            chosen = ", ".join(c[0] for c in fast.inference_choices.values())
            checked.append(path if path != "auto" else f"auto ({chosen})")
        bsr = torch.nn.Sequential(BSRLinear.from_kron(model[0]), torch.nn.ReLU(), BSRLinear.from_kron(model[2]))
        close(bsr(x), want, "BSRLinear.from_kron", 1e-4)
    return f"inference paths agree with the model: {', '.join(checked)}, BSRLinear"


def run_space(folder: Path, **changes) -> Path:
    space = {**SPACE, **changes}
    path = folder / "gpucheck.yaml"
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def check_main(device: str, folder: Path) -> str:
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from kronsearch.cli import app
    from kronsearch.storage import load_studies

    os.chdir(folder)
    path = run_space(folder, train={**SPACE["train"], "device": device})
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    if result.exit_code != 0:
        raise CheckFailed(f"kronsearch run exited {result.exit_code}: {result.output.strip()[-500:]}")
    (study,) = load_studies("gpucheck:one_round")
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    if len(complete) != 2:
        reasons = [t.user_attrs.get("fail_reason") for t in study.get_trials()]
        raise CheckFailed(f"{len(complete)} of 2 trials completed: {reasons}")
    result = runner.invoke(app, ["export", "gpucheck:one_round", "--out", "best.yaml", "--weights", "best.safetensors",
                                 "--bsr"])
    if result.exit_code != 0:
        raise CheckFailed(f"kronsearch export exited {result.exit_code}: {result.output.strip()[-500:]}")
    weights = load_file("best.safetensors")
    if any(t.device.type != "cpu" for t in weights.values()):
        raise CheckFailed("exported weights are not on the CPU")
    best = max(t.values[0] for t in complete)
    return f"2 trials on {device} (best val accuracy {best:.3f}), exported with weights and --bsr"


def check_ray(device: str, folder: Path) -> str:
    from kronsearch.search import run_search
    from kronsearch.storage import load_studies

    os.chdir(folder)
    gpu = 1 if device.startswith("cuda") else 0
    path = run_space(folder, name="gpucheckray", backend={"name": "ray", "resources_per_trial": {"cpu": 1, "gpu": gpu}})
    summary = run_search(path, progress=False)
    (study,) = load_studies("gpucheckray:one_round")
    if summary.completed != 2 or any(t.state.name != "COMPLETE" for t in study.get_trials()):
        raise CheckFailed(f"{summary.completed} of 2 trials finished: {summary.message}")
    return f"2 trials on Ray, {gpu} GPU each: {summary.message.split(';')[0]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (checks the script itself)")
    parser.add_argument("--skip", nargs="*", choices=PARTS, default=[], help="parts not to run")
    args = parser.parse_args()
    parts = [p for p in PARTS if p not in args.skip]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        for part in parts:
            print(f"{part:<10} NOT RUN: no CUDA on this machine (torch {torch.__version__}, "
                  f"torch.cuda.is_available() is False)")
        print(f"gpu check: not run (no CUDA); exit {NO_CUDA}")
        return NO_CUDA
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(args.device)
        print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        here = os.getcwd()
        checks = {"main": lambda: check_main(args.device, Path(tmp) / "main"),
                  "paths": lambda: check_paths(args.device), "bf16": lambda: check_bf16(args.device),
                  "inference": lambda: check_inference(args.device),
                  "ray": lambda: check_ray(args.device, Path(tmp) / "ray")}
        for part in parts:
            (Path(tmp) / part).mkdir()
            start = time.perf_counter()
            try:
                said = checks[part]()
                print(f"{part:<10} PASS ({time.perf_counter() - start:.0f} s): {said}", flush=True)
            except Exception as err:  # noqa: BLE001 - every part reports, whatever fails
                failed.append(part)
                print(f"{part:<10} FAIL ({time.perf_counter() - start:.0f} s): {type(err).__name__}: {err}", flush=True)
                traceback.print_exc(file=sys.stderr)
            finally:
                os.chdir(here)
    print(f"gpu check on {args.device}: {len(parts) - len(failed)} of {len(parts)} parts passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
