"""Every compute path of a Kronecker layer computes the same function and gradients; "auto" picks one by timing."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kronsearch import KronLinear, PatternSelectLinear
from kronsearch.layers import compute
from kronsearch.layers.compute import candidate_paths, kron_linear, set_default_compute
from tests.randomize import randomized

FAST = settings(max_examples=40, deadline=None)
side = st.integers(1, 4)


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    """Each test starts with the "auto" default and nothing timed yet, and leaves both as they were."""
    monkeypatch.setattr(compute, "_default_compute", "auto")
    monkeypatch.setattr(compute, "_choices", {})


def output_and_gradients(module: nn.Module, x: torch.Tensor, grad_out_seed: int = 1):
    """(y, [dL/dx, dL/dp for every parameter]) for L = <y, g> with a fixed random g."""
    x = x.detach().requires_grad_(True)
    y = module(x)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(grad_out_seed))
    return y, torch.autograd.grad(y, [x, *module.parameters()], g)


def assert_same(got, want):
    (y, grads), (y_ref, grads_ref) = got, want
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for i, (a, b) in enumerate(zip(grads, grads_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient {i} (0 is x, then the parameters)")


class OnPath(nn.Module):
    """A KronLinear or PatternSelectLinear forced onto one path of kron_linear (order1/order2 included)."""

    def __init__(self, layer: nn.Module, path: str) -> None:
        super().__init__()
        self.layer, self.path = layer, path

    def forward(self, x):
        with mock.patch.object(compute, "choose_path", return_value=self.path):
            return self.layer(x)


class Materialized(nn.Module):
    """x W^T + b with W built from the definition: the sum of each branch's materialize()."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        branches = self.layer.branches.values() if isinstance(self.layer, PatternSelectLinear) else [self.layer]
        weight = sum(branch.materialize() for branch in branches)
        return x @ weight.t() + (0 if self.layer.bias is None else self.layer.bias)


@FAST
@given(m1=side, n1=side, h=side, w=side, rank=st.integers(1, 3), bias=st.booleans(),
       rows=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_kron_linear_forward_and_every_gradient_agree_on_all_paths_and_with_the_materialized_weight(
        m1, n1, h, w, rank, bias, rows, seed):
    layer = randomized(KronLinear(n1 * w, m1 * h, (h, w), rank, bias=bias, compute="auto"), seed)
    x = torch.randn(rows, n1 * w, dtype=torch.float64)
    reference = output_and_gradients(Materialized(layer), x)
    for path in ("order1", "order2", "merged"):
        assert_same(output_and_gradients(OnPath(layer, path), x), reference)


@FAST
@given(rank=st.integers(1, 3), bias=st.booleans(), rows=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       candidates=st.lists(st.sampled_from([(1, 1), (2, 2), (4, 4), (2, 8), (6, 1), (3, 2), (12, 16)]),
                           min_size=2, max_size=4, unique=True))
def test_pattern_select_forward_and_every_gradient_agree_on_all_paths_and_with_the_summed_weights(
        rank, bias, rows, seed, candidates):
    layer = randomized(PatternSelectLinear(16, 12, candidates, rank, bias=bias), seed)
    x = torch.randn(rows, 16, dtype=torch.float64)
    reference = output_and_gradients(Materialized(layer), x)
    for path in ("factored", "order1", "order2", "merged"):
        assert_same(output_and_gradients(OnPath(layer, path), x), reference)


def test_pattern_select_merged_runs_one_gemm_for_all_candidates():
    layer = randomized(PatternSelectLinear(16, 12, [(2, 2), (4, 4), (3, 8)], compute="merged"), 0)
    with mock.patch.object(torch.nn.functional, "linear", wraps=torch.nn.functional.linear) as linear, \
            mock.patch.object(compute, "kron_matmul") as factored:
        layer(torch.randn(5, 16, dtype=torch.float64))
    assert linear.call_count == 1 and factored.call_count == 0


def test_merged_path_keeps_leading_dimensions_and_passes_gradgradcheck():
    layer = randomized(KronLinear(6, 4, (2, 3), rank=2, compute="merged"), 0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert layer(x).shape == (2, 3, 4)
    params = (layer.s, layer.a, layer.b)
    fn = lambda x, s, a, b: kron_linear(x.reshape(-1, 6), [(s * a, b, 1)], None, "merged")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, *params))


def test_auto_picks_one_of_the_candidate_paths_and_computes_the_same_output():
    layer = randomized(KronLinear(12, 8, (4, 3), rank=2, compute="auto"), 0)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    (key, path), = compute.compute_choices().items()
    assert path in candidate_paths([(layer.factors(), layer.b, layer.order)])
    torch.testing.assert_close(y, Materialized(layer)(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fastest", ["order1", "order2", "merged"])
def test_auto_runs_the_path_that_timed_fastest(fastest):
    layer = KronLinear(16, 16, (4, 4), compute="auto")
    times = {path: 1.0 for path in ("order1", "order2", "merged")} | {fastest: 0.5}
    with mock.patch.object(compute, "time_paths", return_value=times), \
            mock.patch.object(compute, "kron_linear", wraps=compute.kron_linear) as run:
        layer(torch.randn(3, 16))
    assert run.call_args.args[3] == fastest


def test_pattern_select_auto_times_factored_against_merged():
    layer = PatternSelectLinear(16, 16, [(2, 2), (4, 4)], compute="auto")
    timed = []

    def spy(*args):
        times = real(*args)
        timed.append(set(times))
        return times

    real = compute.time_paths
    with mock.patch.object(compute, "time_paths", side_effect=spy):
        layer(torch.randn(3, 16))
    assert timed == [{"factored", "merged"}]
    assert list(compute.compute_choices().values()) in (["factored"], ["merged"])


def test_auto_times_once_per_key_and_rows_within_a_power_of_two_bucket_share_the_timing():
    layer = KronLinear(16, 8, (2, 4), compute="auto")
    with mock.patch.object(compute, "time_paths", wraps=compute.time_paths) as timed:
        for rows in (60, 64, 70, 64):  # all round to 64
            layer(torch.randn(rows, 16))
        assert timed.call_count == 1
        layer(torch.randn(200, 16))  # rounds to 256
        assert timed.call_count == 2


def test_auto_times_calls_without_autograd_separately_as_forward_only():
    layer = KronLinear(16, 8, (2, 4), compute="auto")
    with mock.patch.object(compute, "time_paths", wraps=compute.time_paths) as timed:
        layer(torch.randn(8, 16))
        with torch.no_grad():
            layer(torch.randn(8, 16))
    assert [call.args[-1] for call in timed.call_args_list] == [True, False]


def test_auto_timing_leaves_the_global_random_stream_untouched():
    layer = KronLinear(16, 8, (2, 4), compute="auto")
    x = torch.randn(8, 16)
    torch.manual_seed(3)
    layer(x)  # first call: times the paths
    after_timing = torch.rand(4)
    torch.manual_seed(3)
    layer(x)  # cached: no timing
    torch.testing.assert_close(after_timing, torch.rand(4), rtol=0, atol=0)


def test_the_process_default_applies_to_layers_without_their_own_compute():
    follows, pinned = KronLinear(16, 8, (2, 4)), KronLinear(16, 8, (2, 4), compute="factored")
    set_default_compute("merged")
    with mock.patch.object(compute, "kron_linear", wraps=compute.kron_linear) as run:
        follows(torch.randn(3, 16))
        pinned(torch.randn(3, 16))
    assert [call.args[3] for call in run.call_args_list] == ["merged", "factored"]


@pytest.mark.parametrize("make", [
    lambda: KronLinear(8, 8, (2, 2), compute="fast"),
    lambda: PatternSelectLinear(8, 8, [(2, 2)], compute="fast"),
    lambda: set_default_compute("fast"),
    lambda: set_default_compute(None),
], ids=["KronLinear", "PatternSelectLinear", "default", "default None"])
def test_an_unknown_compute_mode_raises_naming_the_allowed_ones(make):
    with pytest.raises(ValueError, match="'auto', 'factored', 'merged'"):
        make()


def test_an_unknown_path_raises_naming_the_paths():
    terms = [(torch.randn(1, 2, 2), torch.randn(1, 2, 2), 1)]
    with pytest.raises(ValueError, match="path must be one of 'factored', 'order1', 'order2', 'merged'"):
        kron_linear(torch.randn(3, 4), terms, None, "fast")


def test_a_compute_attribute_changed_to_an_unknown_mode_raises_at_the_next_call():
    layer = KronLinear(8, 8, (2, 2))
    layer.compute = "fast"
    with pytest.raises(ValueError, match="compute must be one of 'auto', 'factored', 'merged'"):
        layer(torch.randn(2, 8))


def small_model(mode: str) -> nn.Sequential:
    """KronLinear -> ReLU -> PatternSelectLinear -> ReLU -> KronLinear, float64, same weights for every mode."""
    torch.manual_seed(0)
    model = nn.Sequential(KronLinear(24, 16, (4, 3), rank=2, compute=mode), nn.ReLU(),
                          PatternSelectLinear(16, 12, [(2, 2), (4, 8), (3, 1)], compute=mode), nn.ReLU(),
                          KronLinear(12, 6, (3, 4), compute=mode))
    return randomized(model, 0)


def train(model: nn.Module, steps: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 24, dtype=torch.float64, generator=generator)
    y = torch.randn(32, 6, dtype=torch.float64, generator=generator)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_model_trained_merged_reaches_the_same_weights_as_one_trained_factored():
    merged, factored = train(small_model("merged")), train(small_model("factored"))
    assert merged.keys() == factored.keys()
    for name in merged:
        torch.testing.assert_close(merged[name], factored[name], rtol=1e-9, atol=1e-9, msg=name)
    assert not torch.equal(merged["0.s"], small_model("merged").state_dict()["0.s"])  # it did train
