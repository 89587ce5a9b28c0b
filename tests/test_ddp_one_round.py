"""The one round under DistributedDataParallel (examples/ddp.py): 2 gloo processes on CPU, float64."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from examples import ddp


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return ddp.spawn(2, str(tmp_path_factory.mktemp("ddp")))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The same global batches in one process (its own one-rank group, as the two ranks' runs have)."""
    init = f"file://{tmp_path_factory.mktemp('one') / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        return ddp.train(0, 1)
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_the_same_decisions_at_the_same_step(two_ranks):
    first, second = two_ranks
    assert first["decisions"] and first["decisions"] == second["decisions"]
    assert first["left"] and first["left"] == second["left"]  # candidates left, at the same steps


def test_every_rank_ends_with_the_same_weights(two_ranks):
    first, second = two_ranks
    assert first["weights"].keys() == second["weights"].keys()
    assert all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"])


def test_two_ranks_train_to_the_weights_of_one_process_with_the_same_global_batch(two_ranks, one_process):
    # float64: the two ranks' mean of half-batch gradients and one process's full-batch gradient differ in
    # rounding only; after 16 AdamW steps the weights agree to 1e-9
    assert two_ranks[0]["decisions"] == one_process["decisions"]
    for k, v in one_process["weights"].items():
        torch.testing.assert_close(two_ranks[0]["weights"][k], v, rtol=0, atol=1e-9)
