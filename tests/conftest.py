"""Shared fixtures: tiny space files and a working directory with its own studies/."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kronsearch.cli import app

TINY_SPACE = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "limit": 150},
    "model": {"name": "mlp", "options": {"hidden": [16]}, "include": ["layers.*"]},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.01, "compute": "factored"},  # same floats in every process
    "search": {"strategy": "one_round", "trials": 2, "sampler": "random", "pruner": "none"},
    "space": {"blocks": ["2x2", "4x4"], "ranks": [1], "lambda2": {"low": 1e-5, "high": 1e-3, "log": True}},
}


def merge(base: dict, changes: dict) -> dict:
    """base with changes applied recursively; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


TEST_SESSION_ENV = "KRONSEARCH_TEST_SESSION"  # marks the processes this test session starts (test_ray_backend)


def pytest_configure(config: pytest.Config) -> None:
    """Mark this test session's processes (its xdist workers inherit the controller's mark). In a pytest-xdist
    worker, torch gets one thread: the workers already share the cores between them."""
    os.environ.setdefault(TEST_SESSION_ENV, f"{os.getpid()}-{os.urandom(4).hex()}")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which writes the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per test file (its module fixtures are built once), unless the file names its own.

    A test file that starts Ray says `pytestmark = pytest.mark.xdist_group("ray")`: the Ray files then share
    one worker (pyproject's `--dist loadgroup`), so two local Ray clusters never run at once and each file's
    "no Ray process left behind" check sees its own."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: studies/ lands here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_space(workdir: Path):
    """write_space(name="tiny.yaml", **changes) -> path of TINY_SPACE with changes merged in."""

    def write(filename: str = "tiny.yaml", **changes) -> Path:
        path = workdir / filename
        path.write_text(yaml.safe_dump(merge(TINY_SPACE, changes), sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train as fast on one thread, and on a shared 2-core machine two threads' spin-waits
    made training several times slower. Restored afterwards for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli():
    """invoke(*args) -> click Result, with a wide terminal so rich tables are not squeezed."""
    runner = CliRunner(env={"COLUMNS": "250"})
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def timm():
    """The timm module, or a skip naming why it cannot be imported here: not installed, or a torchvision
    built for another torch (PyPI's Linux torchvision is a CUDA build, which fails next to a CPU torch)."""
    try:
        import timm as module
    except Exception as err:  # noqa: BLE001 - RuntimeError from torchvision's ops, not only ImportError
        if os.environ.get("KRONSEARCH_REQUIRE_TIMM"):  # .ci/timm-tests: a skip there would hide a broken install
            raise
        pytest.skip(f"timm cannot be imported here: {type(err).__name__}: {err}")
    return module
