"""KronLinear behaves exactly like nn.Linear with weight W = sum_i (S ⊙ A_i) ⊗ B_i, without building W."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from kronsearch import BSRLinear, KronLinear
from kronsearch.layers import kron_ops
from kronsearch.layers.blocks import contraction_macs
from kronsearch.layers.kron_ops import kron_matmul

FAST = settings(max_examples=50, deadline=None)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta:UserWarning")

side = st.integers(1, 4)
rank = st.integers(1, 3)
lead_shape = st.sampled_from([(), (1,), (5,), (2, 3), (2, 1, 3)])
seed = st.integers(0, 2**31 - 1)


def factor_gradient_path(gemm: bool):
    """Force the gradient of the broadcast factors through one GEMM (True) or autograd's bmm + sum (False)."""
    return mock.patch.object(kron_ops, "GEMM_GRAD_MIN_ELEMENTS", -1 if gemm else 2**62)


def random_layer(m1, n1, h, w, r, bias=True, dtype=torch.float64, seed=0) -> KronLinear:
    """A KronLinear with (m1*h, n1*w) weight and every parameter random (S included, not all ones)."""
    torch.manual_seed(seed)
    layer = KronLinear(n1 * w, m1 * h, (h, w), r, bias=bias, dtype=dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    return layer


def reference_weight(layer: KronLinear) -> torch.Tensor:
    """W built entry by entry from the definition: block (p, q) = sum_i S[p,q] A_i[p,q] B_i."""
    m1, n1 = layer.grid
    h, w = layer.block
    rows = []
    for p in range(m1):
        rows.append(torch.cat([sum(layer.s[p, q] * layer.a[i, p, q] * layer.b[i] for i in range(layer.rank))
                               for q in range(n1)], dim=1))
    return torch.cat(rows, dim=0)


def test_materialize_equals_the_definition_block_by_block():
    layer = random_layer(3, 2, 2, 3, 2)
    torch.testing.assert_close(layer.materialize(), reference_weight(layer))


@FAST
@given(m1=side, n1=side, h=side, w=side, r=rank, lead=lead_shape, order=st.sampled_from([1, 2]),
       bias=st.booleans(), gemm=st.booleans(), seed=seed)
def test_forward_and_gradients_equal_dense_linear_with_the_materialized_weight(m1, n1, h, w, r, lead, order, bias,
                                                                                gemm, seed):
    layer = random_layer(m1, n1, h, w, r, bias=bias, seed=seed)
    layer.compute, layer.order = "factored", order
    x = torch.randn(*lead, n1 * w, dtype=torch.float64, requires_grad=True)
    params = [x, layer.s, layer.a, layer.b] + ([layer.bias] if bias else [])

    with factor_gradient_path(gemm):
        y = layer(x)
    expected = x @ layer.materialize().t() + (layer.bias if bias else 0)
    assert y.shape == (*lead, m1 * h)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)

    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, g)
    expected_grads = torch.autograd.grad(expected, params, g)
    for name, got, want in zip(["x", "s", "a", "b", "bias"], grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("gemm", [False, True], ids=["bmm-grad", "gemm-grad"])
@pytest.mark.parametrize("order", [1, 2])
def test_kron_matmul_passes_gradcheck_and_gradgradcheck(order, gemm):
    torch.manual_seed(order)
    x = torch.randn(3, 2 * 3, dtype=torch.float64, requires_grad=True)
    factors = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)  # (r, m1, n1)
    blocks = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)  # (r, h, w)
    fn = lambda x, f, b: kron_matmul(x, f, b, order)  # noqa: E731
    with factor_gradient_path(gemm):
        assert torch.autograd.gradcheck(fn, (x, factors, blocks))
        assert torch.autograd.gradgradcheck(fn, (x, factors, blocks))


def test_kron_matmul_accepts_non_contiguous_rows():
    x = torch.randn(5, 12, dtype=torch.float64)[:, :8]
    factors, blocks = torch.randn(1, 3, 2, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64)
    weight = torch.kron(factors[0], blocks[0])
    for order in (1, 2):
        torch.testing.assert_close(kron_matmul(x, factors, blocks, order), x @ weight.t())


@FAST
@given(m1=st.integers(1, 64), n1=st.integers(1, 64), h=st.integers(1, 64), w=st.integers(1, 64), r=rank)
def test_the_cheaper_contraction_order_is_chosen(m1, n1, h, w, r):
    layer = KronLinear(n1 * w, m1 * h, (h, w), r)
    macs = contraction_macs(m1, n1, h, w, r)
    assert macs[layer.order - 1] == min(macs)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("compute, order", [("factored", 1), ("factored", 2), ("merged", 1)])
def test_low_precision_forward_runs_on_cpu_and_is_close_to_float64(dtype, tol, compute, order):
    layer64 = random_layer(6, 8, 4, 3, 2)
    x64 = torch.randn(16, layer64.in_features, dtype=torch.float64)
    layer = random_layer(6, 8, 4, 3, 2).to(dtype)
    layer.load_state_dict(layer64.state_dict())
    layer.compute, layer.order = compute, order
    try:
        y = layer(x64.to(dtype))
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"this torch build lacks a CPU {dtype} kernel the forward needs: {err}")
    expected = layer64(x64)
    assert y.dtype == dtype
    scale = expected.abs().max().item()
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("batch", [64, 128])  # 128 takes _BroadcastBmm's route (its size threshold), 64 autograd's
def test_bf16_autocast_forward_and_backward_of_the_default_path_match_float32(batch):
    torch.manual_seed(0)
    layer = KronLinear(784, 256, block=(4, 4))
    assert layer.compute is None and (batch * 64 * 196 > kron_ops.GEMM_GRAD_MIN_ELEMENTS) == (batch == 128)
    x = torch.randn(batch, 784)

    def step(autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        layer.zero_grad()
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(leaf)
            loss = y.float().pow(2).mean()
        loss.backward()
        return y.float(), [leaf.grad] + [p.grad.clone() for p in layer.parameters()]

    (y16, grads16), (y32, grads32) = step(True), step(False)
    for low, exact in zip([y16, *grads16], [y32, *grads32]):
        assert low.dtype == torch.float32 and torch.isfinite(low).all()
        assert (low - exact).norm() <= 1e-2 * exact.norm()  # measured 0.3-0.5%: bf16 keeps 8 bits of mantissa


def sparse_layer(seed=0) -> KronLinear:
    """A 3x4-block layer with 4x2 blocks whose S has exact zeros and entries of size >= 0.5 elsewhere."""
    layer = random_layer(3, 4, 4, 2, 2, seed=seed)
    with torch.no_grad():
        layer.s.copy_(torch.tensor([[1.0, 0.0, -0.7, 0.0],
                                    [0.0, 0.0, 0.0, 0.0],
                                    [0.5, 2.0, 0.0, -1.5]], dtype=torch.float64))
    return layer


def test_zeros_in_s_give_exact_zero_blocks_in_materialize():
    layer = sparse_layer()
    blocks = layer.materialize().reshape(3, 4, 4, 2).transpose(1, 2)  # (p, q, a, b)
    for p in range(3):
        for q in range(4):
            assert (blocks[p, q] == 0).all() == (layer.s[p, q] == 0).item()


def test_to_bsr_stores_only_surviving_blocks_and_densifies_to_materialize():
    layer = sparse_layer()
    for threshold in (None, 1e-2):
        bsr = layer.to_bsr(threshold)
        assert bsr.layout == torch.sparse_bsr
        assert bsr.values().shape == (int((layer.s != 0).sum()), 4, 2)
        torch.testing.assert_close(bsr.to_dense(), layer.materialize().detach())


def test_to_bsr_threshold_drops_small_blocks():
    layer = sparse_layer()
    with torch.no_grad():
        layer.s[0, 1] = 1e-3  # block (0, 1): rows 0-3, columns 2-3
    assert layer.to_bsr(None).values().shape[0] == 6
    assert layer.to_bsr(1e-2).values().shape[0] == 5
    assert (layer.to_bsr(1e-2).to_dense()[:4, 2:4] == 0).all()
    assert (layer.to_bsr(None).to_dense()[:4, 2:4] != 0).any()


def test_bsr_linear_from_kron_reproduces_the_layer_output():
    layer = sparse_layer()
    x = torch.randn(2, 5, layer.in_features, dtype=torch.float64)
    merged = BSRLinear.from_kron(layer)
    torch.testing.assert_close(merged(x), layer(x).detach())


def test_to_linear_computes_the_same_function():
    layer = random_layer(3, 5, 2, 4, 2)
    x = torch.randn(7, layer.in_features, dtype=torch.float64)
    linear = layer.to_linear()
    assert isinstance(linear, nn.Linear)
    torch.testing.assert_close(linear(x), layer(x).detach())


def block_sparse_sum_of_kronecker_terms(m1, n1, h, w, r, seed):
    """(W, S != 0): W = sum_{i<r} (S ⊙ A_i) ⊗ B_i with a random 0/1 S having at least r non-zeros."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m1, n1, generator=g) < 0.5
    mask.view(-1)[torch.randperm(m1 * n1, generator=g)[:r]] = True
    a = torch.randn(r, m1, n1, generator=g, dtype=torch.float64) * mask
    b = torch.randn(r, h, w, generator=g, dtype=torch.float64)
    weight = sum(torch.kron(a[i], b[i]) for i in range(r))
    return weight, mask


@FAST
@given(m1=st.integers(2, 4), n1=st.integers(2, 4), h=st.integers(1, 4), w=st.integers(1, 4),
       r=st.integers(2, 3), seed=seed)
def test_proposition_1_a_block_sparse_rank_r_matrix_is_recovered_exactly_at_rank_r_not_below(m1, n1, h, w, r, seed):
    assume(h * w >= r)
    weight, mask = block_sparse_sum_of_kronecker_terms(m1, n1, h, w, r, seed)
    linear = nn.Linear(n1 * w, m1 * h, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(weight)

    exact = KronLinear.from_linear(linear, (h, w), rank=r)
    torch.testing.assert_close(exact.materialize().detach(), weight, rtol=0, atol=1e-10)
    assert torch.equal(exact.block_mask(), mask)

    truncated = KronLinear.from_linear(linear, (h, w), rank=r - 1)
    error = (truncated.materialize().detach() - weight).norm() / weight.norm()
    assert error > 1e-6


@pytest.mark.parametrize("out_features, in_features, block, r", [
    (64, 64, (8, 8), 1), (64, 64, (8, 8), 4), (96, 48, (4, 16), 2), (48, 96, (16, 2), 1),
])
def test_initial_output_variance_matches_nn_linear_within_20_percent(out_features, in_features, block, r):
    seeds = range(30)
    x = torch.randn(512, in_features, generator=torch.Generator().manual_seed(0))

    def mean_output_variance(make):
        total = 0.0
        for s in seeds:
            torch.manual_seed(s)
            with torch.no_grad():
                total += make()(x).var().item()
        return total / len(seeds)

    kron = mean_output_variance(lambda: KronLinear(in_features, out_features, block, r))
    dense = mean_output_variance(lambda: nn.Linear(in_features, out_features))
    assert abs(kron / dense - 1) < 0.2


def test_a_block_that_does_not_divide_the_shape_raises_naming_the_shape_and_valid_blocks():
    with pytest.raises(ValueError, match=r"\(out=6, in=10\)") as err:
        KronLinear(10, 6, (4, 5))
    assert "valid blocks: 1x1, 1x2, 1x5, 1x10, 2x1" in str(err.value)
    assert "6x10" in str(err.value)


@pytest.mark.parametrize("bad_rank", [0, -1, 1.5])
def test_a_rank_below_one_or_not_an_integer_raises(bad_rank):
    with pytest.raises(ValueError, match="rank"):
        KronLinear(8, 8, (2, 2), rank=bad_rank)


def test_wrong_input_width_raises():
    layer = KronLinear(8, 6, (3, 4))
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 8\)"):
        layer(torch.randn(5, 6))


def test_rank_must_be_an_integer_not_a_bool():
    with pytest.raises(ValueError, match="rank must be an integer"):
        KronLinear(8, 8, (2, 2), rank=True)


def test_a_block_of_the_wrong_length_is_a_clear_value_error():
    with pytest.raises(ValueError, match="a block is"):
        KronLinear(8, 8, (2, 2, 2))
