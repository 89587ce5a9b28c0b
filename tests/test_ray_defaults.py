"""How many trials the Ray backend runs at once when backend.max_concurrent is not set: as many as the cluster's
CPUs and GPUs hold at backend.resources_per_trial, and the run says why (issue 33)."""

from __future__ import annotations

import pytest

from kronsearch.space import parse_space
from tests.conftest import TINY_SPACE, merge

ray_backend = pytest.importorskip("kronsearch.backends.ray")


def backend(**changes) -> dict:
    return parse_space(merge(TINY_SPACE, {"backend": {"name": "ray", **changes}})).backend


def test_max_concurrent_defaults_to_unset():
    assert backend()["max_concurrent"] is None


def test_without_max_concurrent_as_many_trials_as_the_cpus_hold():
    assert ray_backend.trials_in_flight(backend(), {"CPU": 2.0}) == (
        2, "max_concurrent not set: 2 CPUs / 1 per trial")
    assert ray_backend.trials_in_flight(backend(resources_per_trial={"cpu": 3}), {"CPU": 16.0})[0] == 5


def test_the_scarcer_resource_decides_gpus_included():
    count, why = ray_backend.trials_in_flight(backend(resources_per_trial={"cpu": 1, "gpu": 0.5}),
                                              {"CPU": 16.0, "GPU": 2.0})
    assert (count, why) == (4, "max_concurrent not set: 2 GPUs / 0.5 per trial")


def test_at_least_one_trial_when_none_fits_and_max_concurrent_wins_when_set():
    assert ray_backend.trials_in_flight(backend(resources_per_trial={"cpu": 4}), {"CPU": 2.0})[0] == 1
    assert ray_backend.trials_in_flight(backend(max_concurrent=3), {"CPU": 64.0}) == (3, "backend.max_concurrent")
