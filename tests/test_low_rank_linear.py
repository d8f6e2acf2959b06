"""Tests of LowRankLinear: against a float64 reference built by loops, parameter count, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rppnets.layers.low_rank_linear import LowRankLinear


def reference_forward(x, u, v, b):
    """y[s, j] = sum_i x[s, i] * sum_r u[i, r] v[r, j] + b[j], with Python loops (differentiable)."""
    batch, m = x.shape
    rank, out = v.shape
    rows = []
    for s in range(batch):
        row = []
        for j in range(out):
            total = b[j] if b is not None else x.new_zeros(())
            for i in range(m):
                for r in range(rank):
                    total = total + x[s, i] * u[i, r] * v[r, j]
            row.append(total)
        rows.append(torch.stack(row))
    return torch.stack(rows)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 6), out=st.integers(1, 6), rank=st.integers(1, 4), batch=st.integers(1, 3),
       bias=st.sampled_from(("full", "none")))
def test_matches_float64_reference(m, out, rank, batch, bias):
    torch.manual_seed(0)
    layer = LowRankLinear(m, out, rank, bias=bias).double()
    x = torch.randn(batch, m, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (batch, out)
    params = [x, layer.weight_in, layer.weight_out] + ([layer.bias] if layer.bias is not None else [])
    refs = [p.detach().clone().requires_grad_() for p in params]
    y_ref = reference_forward(refs[0], refs[1], refs[2], refs[3] if len(refs) == 4 else None)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    grad_y = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, params, grad_y), torch.autograd.grad(y_ref, refs, grad_y)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_rank_bounds_the_layer_and_shapes_follow_it():
    layer = LowRankLinear(30, 20, rank=3)
    assert layer.weight_in.shape == (30, 3) and layer.weight_out.shape == (3, 20)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (30 + 20) + 20
    assert sum(p.numel() for p in LowRankLinear(30, 20, 3, bias="none").parameters()) == 3 * 50
    w = (layer.weight_in @ layer.weight_out).detach()
    assert torch.linalg.matrix_rank(w) == 3
    x = torch.randn(40, 30)
    torch.testing.assert_close(layer(x), x @ w + layer.bias, atol=1e-5, rtol=1e-5)
    assert all(s in repr(layer) for s in ("in_features=30", "out_features=20", "rank=3", "bias='full'"))


def test_initialisation_each_factor_like_its_nn_linear():
    torch.manual_seed(0)
    layer = LowRankLinear(400, 300, rank=25)
    for tensor, fan_in in ((layer.weight_in, 400), (layer.weight_out, 25), (layer.bias, 400)):
        assert 0.95 * fan_in**-0.5 < tensor.abs().max() <= fan_in**-0.5


@pytest.mark.parametrize("kwargs, name", [
    ({"in_features": 0}, "in_features"),
    ({"out_features": -2}, "out_features"),
    ({"rank": 0}, "rank"),
    ({"rank": 2.0}, "rank"),
    ({"bias": True}, "bias"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        LowRankLinear(**({"in_features": 4, "out_features": 6, "rank": 2} | kwargs))


def test_input_batch_dimensions_and_wrong_width():
    layer = LowRankLinear(6, 5, 2)
    x = torch.randn(4, 3, 6)
    torch.testing.assert_close(layer(x)[2, 1], layer(x[2, 1]))
    with pytest.raises(ValueError, match="7 features, expected 6"):
        layer(torch.randn(3, 7))
