"""Tests of RPPLinear: against an explicit float64 reference, structure of P, modes, memory, bad input; signed RPP and
the init option."""

import copy
import math

import pytest
import torch
from helpers import forward_backward, permuted_weight_by_loops, signs_by_loops
from hypothesis import given, settings
from hypothesis import strategies as st

from rppnets.layers import rpp_ops
from rppnets.layers.backends import EagerBackend, Permutation, default_backend
from rppnets.layers.permutation import build_index
from rppnets.layers.rpp_linear import (
    BIAS_MODES,
    FEISTEL_PERMUTATIONS,
    INITS,
    PERMUTATIONS,
    RPPLinear,
    index_storage,
)
from torch import nn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def reference_weight(layer: RPPLinear) -> torch.Tensor:
    """W_p built entry by entry with Python loops from P: W_p[i, h*n + j] = W[P[h, i, j], j]."""
    w = layer.weight.detach()
    return permuted_weight_by_loops(layer.permutation_tensor(), w, w.dtype)


def reference_forward(layer: RPPLinear, x: torch.Tensor, weight: torch.Tensor, bias):
    """The same layer from differentiable dense ops: W_p = W gathered with P, bias tiled if reused."""
    m, n, k = layer.in_features, layer.width, layer.k
    p = layer.permutation_tensor()  # (k, m, n)
    wp = torch.stack([weight.gather(0, p[h]) for h in range(k)], dim=1).reshape(m, k * n)
    y = x @ wp
    if bias is not None:
        y = y + (bias.repeat(k) if bias.numel() == n and k > 1 else bias)
    return y


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 4),
    k=st.integers(1, 4),
    batch=st.integers(1, 5),
    bias=st.sampled_from(BIAS_MODES),
    permutation=st.sampled_from(PERMUTATIONS),
    seed=st.integers(0, 2**64 - 1),
    layer_id=st.integers(0, 50),
)
def test_matches_float64_reference(m, n, k, batch, bias, permutation, seed, layer_id):
    torch.manual_seed(0)
    layer = RPPLinear(m, n, k, bias=bias, permutation=permutation, seed=seed, layer=layer_id).double()
    assert torch.equal(layer.permutation_tensor(), layer.permutation_tensor())
    x = torch.randn(batch, m, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (batch, k * n)
    wp = reference_weight(layer)
    expected = x @ wp + (0 if layer.bias is None else (layer.bias.repeat(k) if bias == "reuse" else layer.bias))
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=0)

    grad_y = torch.randn_like(y)
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(y, params, grad_y)
    w = layer.weight.detach().clone().requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ref_params = [x_ref, w] + ([b] if b is not None else [])
    ref_grads = torch.autograd.grad(reference_forward(layer, x_ref, w, b), ref_params, grad_y)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_each_copy_permutes_its_column_and_every_entry_appears_k_times(permutation):
    m, n, k = 13, 5, 7
    layer = RPPLinear(m, n, k, permutation=permutation, seed=3, layer=2)
    p = layer.permutation_tensor()
    assert p.shape == (k, m, n) and p.dtype == torch.int64
    assert torch.equal(p.sort(dim=1).values, torch.arange(m)[None, :, None].expand(k, m, n))
    with torch.no_grad():
        layer.weight.copy_(torch.arange(m * n, dtype=torch.float32).view(m, n))  # every entry distinct
        layer.bias.zero_()
    wp = layer(torch.eye(m))  # row i of the output is row i of W_p
    assert torch.equal(torch.bincount(wp.flatten().long(), minlength=m * n), torch.full((m * n,), k))
    columns = wp.long() % n  # the column of W each entry came from
    assert torch.equal(columns, (torch.arange(k * n) % n).expand(m, k * n))


@pytest.mark.parametrize("bias, extra", [("full", 6 * 4), ("reuse", 6), ("none", 0)])
def test_parameter_count_and_attributes(bias, extra):
    layer = RPPLinear(5, 6, 4, bias=bias)
    assert sum(p.numel() for p in layer.parameters()) == 5 * 6 + extra
    assert (layer.in_features, layer.width, layer.k, layer.out_features) == (5, 6, 4, 24)
    assert (layer.bias_mode, layer.permutation, layer.seed, layer.layer) == (bias, "stored", 0, 0)
    assert layer.weight.shape == (5, 6)
    assert (layer.bias is None) == (bias == "none")
    assert all(name in repr(layer) for name in ("in_features=5", "width=6", "k=4", f"bias='{bias}'", "stored"))


def test_initialisation_is_bounded_like_nn_linear():
    torch.manual_seed(0)
    layer = RPPLinear(400, 30, 3)
    bound = 400**-0.5
    for tensor in (layer.weight, layer.bias):
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.95 * bound
        assert abs(tensor.mean().item()) < 0.1 * bound


def test_input_batch_dimensions_and_wrong_width():
    layer = RPPLinear(6, 2, 3)
    x = torch.randn(4, 5, 6)
    y = layer(x)
    assert y.shape == (4, 5, 6)
    torch.testing.assert_close(y[2, 3], layer(x[2, 3]))
    with pytest.raises(ValueError, match="7 features"):
        layer(torch.randn(3, 7))


def test_same_seed_same_permutation_also_after_a_state_dict_round_trip():
    a = RPPLinear(50, 4, 3, seed=5, layer=1)
    b = RPPLinear(50, 4, 3, seed=5, layer=1)
    assert torch.equal(a.permutation_tensor(), b.permutation_tensor())
    assert set(a.state_dict()) == {"weight", "bias"}  # P is recomputed, never checkpointed
    fresh = RPPLinear(50, 4, 3, seed=5, layer=1, permutation="generated")
    fresh.load_state_dict(a.state_dict())
    assert torch.equal(fresh.permutation_tensor(), a.permutation_tensor())
    x = torch.randn(3, 50)
    torch.testing.assert_close(fresh(x), a(x))


def test_different_layers_and_seeds_give_different_permutations():
    base = RPPLinear(30, 4, 3, seed=0, layer=0).permutation_tensor()
    assert not torch.equal(base, RPPLinear(30, 4, 3, seed=0, layer=1).permutation_tensor())
    assert not torch.equal(base, RPPLinear(30, 4, 3, seed=1, layer=0).permutation_tensor())
    # and the copies and columns of one layer differ from each other
    assert len({tuple(base[h, :, j].tolist()) for h in range(3) for j in range(4)}) == 12


def test_all_feistel_modes_compute_the_same_layer():
    torch.manual_seed(0)
    layers = [RPPLinear(37, 3, 5, permutation=p, seed=8) for p in FEISTEL_PERMUTATIONS]
    for layer in layers[1:]:
        layer.load_state_dict(layers[0].state_dict())
    x = torch.randn(6, 37)
    grad_y = torch.randn(6, 15)
    results = []
    for layer in layers:
        y = layer(x)
        y.backward(grad_y)
        results.append((y, layer.weight.grad, layer.bias.grad))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert torch.equal(got, want)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_gpu_fold_through_the_inverse_agrees_with_the_cpu_scatter_add(permutation):
    # the eager GPU path, run on the CPU: inverse index (scatter or backward Feistel), gather, sum
    layer = RPPLinear(300, 7, 6, permutation=permutation, seed=1, layer=2).double()
    p, kind = layer.permutation_args()
    perm = Permutation(kind, p, 300, 7, 6)
    grad_wp = torch.randn(300, 42, dtype=torch.float64)
    eager = EagerBackend()
    want = eager.fold(grad_wp, perm)  # bincount on the CPU
    if kind != "identity":
        torch.testing.assert_close(eager.fold_by_gather(grad_wp, perm), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(rpp_ops.fold_weight_grad(grad_wp, p, 6, kind), want, atol=1e-12, rtol=0)


def test_identity_control_is_the_narrow_layer_tiled_k_times():
    torch.manual_seed(0)
    m, n, k = 11, 3, 4
    layer = RPPLinear(m, n, k, bias="reuse", permutation="identity", seed=5, layer=2)
    assert torch.equal(layer.permutation_tensor(), torch.arange(m)[None, :, None].expand(k, m, n))
    assert index_storage(layer) == (0, 0) and len(list(layer.buffers())) == 0
    x = torch.randn(6, m, requires_grad=True)
    wp = rpp_ops.permuted_weight(layer.weight.detach(), None, k, "identity")
    assert torch.equal(wp, layer.weight.detach().repeat(1, k))  # W_p = [W W ... W]
    y = layer(x)
    narrow = x @ layer.weight + layer.bias  # the narrow layer, whose output each copy repeats
    torch.testing.assert_close(y, narrow.repeat(1, k))
    y.square().mean().backward()
    w = layer.weight.detach().clone().requires_grad_()
    (x.detach() @ w + layer.bias.detach()).repeat(1, k).square().mean().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad)


def test_random_control_draws_a_fresh_permutation_per_column_fixed_by_seed_and_layer():
    m, n, k = 300, 4, 3
    layer = RPPLinear(m, n, k, permutation="random", seed=7, layer=1)
    index = layer.index_tensor()
    assert index.shape == (m, k * n) and index.dtype == torch.int16  # stored like "stored"
    assert index_storage(layer) == (m * k * n, 2 * m * k * n)
    assert "index" not in layer.state_dict()
    p = layer.permutation_tensor()
    assert torch.equal(p.sort(dim=1).values, torch.arange(m)[None, :, None].expand(k, m, n))
    assert torch.equal(p, RPPLinear(m, n, k, permutation="random", seed=7, layer=1).permutation_tensor())
    assert not torch.equal(p, RPPLinear(m, n, k, permutation="random", seed=7, layer=2).permutation_tensor())
    assert not torch.equal(p, RPPLinear(m, n, k, permutation="random", seed=8, layer=1).permutation_tensor())
    assert not torch.equal(index, build_index(m, n, k, seed=7, layer=1))  # not the Feistel P
    assert (index != build_index(m, n, k, seed=7, layer=1)).float().mean() > 0.9  # nor close to it
    assert len({tuple(p[h, :, j].tolist()) for h in range(k) for j in range(n)}) == k * n


def test_weight_gradient_is_deterministic():
    layer = RPPLinear(64, 8, 20, permutation="generated")
    x = torch.randn(32, 64)
    grads = []
    for _ in range(3):
        layer.zero_grad()
        layer(x).square().sum().backward()
        grads.append(layer.weight.grad.clone())
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_first_layer_input_gets_no_gradient_and_only_the_input_is_saved():
    layer = RPPLinear(20, 4, 5)
    x = torch.randn(8, 20)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert [t.shape for t in saved] == [x.shape]  # no index, no W_p; W is not needed without dx
    y.sum().backward()
    assert x.grad is None and layer.weight.grad is not None


def test_shared_layers_hold_one_index_between_them():
    a = RPPLinear(40, 3, 2, permutation="shared", seed=4, layer=0)
    b = RPPLinear(40, 3, 2, permutation="shared", seed=4, layer=7)
    assert a.index_tensor().data_ptr() == b.index_tensor().data_ptr()
    assert torch.equal(a.permutation_tensor(), RPPLinear(40, 3, 2, seed=4, layer=0).permutation_tensor())
    model = torch.nn.Sequential(a, torch.nn.ReLU(), torch.nn.Linear(6, 40), b)
    assert index_storage(model) == (40 * 6, 40 * 6)  # uint8, counted once
    assert "shared_index" not in model.state_dict() and len(list(model.buffers())) == 0


def test_a_deep_copy_shares_the_shared_index_and_copies_the_rest():
    model = torch.nn.ModuleList([RPPLinear(40, 3, 2, permutation="shared", seed=4), RPPLinear(40, 3, 2, seed=4)])
    clone = copy.deepcopy(model)
    assert clone[0].index_tensor() is model[0].index_tensor()  # the process-wide cache's entry
    assert clone[1].index_tensor().data_ptr() != model[1].index_tensor().data_ptr()  # a stored index is the layer's
    assert clone[0].weight.data_ptr() != model[0].weight.data_ptr()
    assert index_storage(torch.nn.ModuleList([model, clone])) == (3 * 240, 3 * 240)  # uint8
    x = torch.randn(5, 40)
    for copied, original in zip(clone, model):
        assert torch.equal(copied(x), original(x))


def test_index_storage_counts_stored_per_layer_and_generated_as_zero():
    stored = torch.nn.Sequential(RPPLinear(300, 2, 3), RPPLinear(300, 2, 3, layer=1))
    assert index_storage(stored) == (2 * 300 * 6, 2 * 300 * 6 * 2)  # int16 for m = 300
    assert stored[0].index.dtype == torch.int16
    generated = torch.nn.Sequential(RPPLinear(300, 2, 3, permutation="generated"))
    assert index_storage(generated) == (0, 0)
    assert "keys" not in generated.state_dict()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 0}, "k"),
        ({"k": 2.0}, "k"),
        ({"k": True}, "k"),
        ({"width": 0}, "width"),
        ({"width": "3"}, "width"),
        ({"in_features": 0}, "in_features"),
        ({"in_features": 2**30 + 1}, "in_features"),
        ({"in_features": 4.5}, "in_features"),
        ({"bias": "shared"}, "bias"),
        ({"bias": True}, "bias"),
        ({"permutation": "feistel"}, "permutation"),
        ({"seed": -1}, "seed"),
        ({"layer": 1.5}, "layer"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"in_features": 4, "width": 3, "k": 2, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}=.* is invalid; allowed: "):
        RPPLinear(**args)


@pytest.mark.parametrize("signs", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_bfloat16_parameters_and_autocast_are_close_to_float32(permutation, signs):
    torch.manual_seed(0)
    layer = RPPLinear(64, 8, 4, permutation=permutation, signs=signs)
    x = torch.randn(16, 64)
    y32 = layer(x)
    y32.square().mean().backward()
    grad32 = layer.weight.grad.clone()

    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = layer(x)
    assert y_auto.dtype == torch.bfloat16
    y_auto.float().square().mean().backward()
    assert layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(y_auto.float(), y32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(layer.weight.grad, grad32, atol=0.02, rtol=0.05)

    half = RPPLinear(64, 8, 4, permutation=permutation, signs=signs).to(torch.bfloat16)
    half.load_state_dict(layer.state_dict())
    y16 = half(x.to(torch.bfloat16))
    y16.float().square().mean().backward()
    assert half.weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(half.weight.grad.float(), grad32, atol=0.02, rtol=0.05)


@cuda
@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("bias", BIAS_MODES)
def test_cuda_matches_cpu(permutation, bias):
    torch.manual_seed(0)
    cpu = RPPLinear(300, 7, 6, bias=bias, permutation=permutation, seed=2, layer=3).double()
    gpu = RPPLinear(300, 7, 6, bias=bias, permutation=permutation, seed=2, layer=3).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    assert torch.equal(gpu.permutation_tensor(), cpu.permutation_tensor())
    x = torch.randn(9, 300, dtype=torch.float64, requires_grad=True)
    x_gpu = x.detach().cuda().requires_grad_()
    y, y_gpu = cpu(x), gpu(x_gpu)
    torch.testing.assert_close(y_gpu.cpu(), y, atol=1e-10, rtol=0)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    y_gpu.backward(grad_y.cuda())
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(gpu.weight.grad.cpu(), cpu.weight.grad, atol=1e-10, rtol=0)
    if bias != "none":
        torch.testing.assert_close(gpu.bias.grad.cpu(), cpu.bias.grad, atol=1e-10, rtol=0)


@cuda
def test_cuda_shared_index_follows_the_device_and_bfloat16_autocast_runs():
    layer = RPPLinear(100, 4, 3, permutation="shared").cuda()
    x = torch.randn(5, 100, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.index_tensor().is_cuda
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.is_cuda


@cuda
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_cuda_triton_kernels_match_the_eager_cuda_path(permutation):
    layer = RPPLinear(784, 10, 100, permutation=permutation, seed=4, layer=1).cuda()
    x = torch.randn(128, 784, device="cuda", requires_grad=True)
    with_triton = forward_backward(layer, x)
    assert default_backend("cuda") == "triton"
    layer.backend = "eager"
    eager = forward_backward(layer, x)
    for got, want in zip(with_triton, eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(with_triton[0], eager[0])  # the same W_p, so the same forward


@cuda
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_cuda_fused_triton_step_matches_the_eager_cuda_path_and_repeats_bit_for_bit(permutation):
    layer = RPPLinear(784, 10, 100, permutation=permutation, seed=4, layer=1).cuda()
    x = torch.randn(128, 784, device="cuda", requires_grad=True)
    layer.backend = "triton-fused"
    fused, again = forward_backward(layer, x), forward_backward(layer, x)
    layer.backend = "eager"
    eager = forward_backward(layer, x)
    for got, repeated, want in zip(fused, again, eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got, repeated)  # no atomics: the same sums in the same order
    # bfloat16 products (which Triton's interpreter cannot check) against the float32 step
    layer.backend = "triton-fused"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = forward_backward(layer, x)
    assert half[0].dtype == torch.bfloat16 and half[2].dtype == torch.float32
    for got, want in zip(half, eager):
        torch.testing.assert_close(got.float(), want, atol=0.02 * want.abs().max().item(), rtol=0.05)


@cuda
@pytest.mark.parametrize("permutation", ["stored", "generated"])
def test_cuda_fused_triton_step_never_allocates_a_whole_w_p(permutation):
    # the unfused step allocates W_p (m, k*n) in forward and W_p and dW_p in backward; the fused one neither
    m, n, k = 784, 10, 100
    layer = RPPLinear(m, n, k, permutation=permutation).cuda()
    x = torch.randn(128, m, device="cuda")
    wp_bytes = m * k * n * 4

    def step_peak(backend: str) -> int:
        layer.backend = backend
        layer.weight.grad = layer.bias.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        layer(x).sum().backward()  # outputs: y (128, k*n), dW and db; no dx (x needs no gradient)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start

    # unfused: W_p in forward, dW_p and its k copies in W's order in backward. Fused, by our count: dy made
    # contiguous, x^T, the fold's partial dWs and, stored, P^-1 in the index's dtype (int16: half a W_p), 0.9 W_p
    unfused, fused = step_peak("triton"), step_peak("triton-fused")
    assert unfused >= 2 * wp_bytes and fused < wp_bytes, (unfused, fused, wp_bytes)


# Signed RPP (signs=True) and the init option.


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 4),
    k=st.integers(1, 4),
    bias=st.sampled_from(BIAS_MODES),
    permutation=st.sampled_from(PERMUTATIONS),
    seed=st.integers(0, 2**64 - 1),
    layer_id=st.integers(0, 50),
)
def test_signed_layer_matches_float64_loop_reference(m, n, k, bias, permutation, seed, layer_id):
    torch.manual_seed(0)
    layer = RPPLinear(m, n, k, bias=bias, permutation=permutation, seed=seed, layer=layer_id, signs=True).double()
    s = signs_by_loops(seed, 0 if permutation == "shared" else layer_id, m, n, k)
    assert torch.equal(layer.sign_tensor(), s)
    x = torch.randn(3, m, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    wp = permuted_weight_by_loops(layer.permutation_tensor(), layer.weight.detach(), torch.float64, s)
    expected = x @ wp + (0 if layer.bias is None else (layer.bias.repeat(k) if bias == "reuse" else layer.bias))
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=0)
    grad_y = torch.randn_like(y)
    grad_x, grad_w = torch.autograd.grad(y, [x, layer.weight], grad_y)
    torch.testing.assert_close(grad_x, grad_y @ wp.t(), atol=1e-10, rtol=0)
    # dW[r, j]: the sum over the copies h of s * dW_p where W[r, j] went, P[h, i, j] = r
    grad_wp, p = x.detach().t() @ grad_y, layer.permutation_tensor()
    want = torch.zeros(m, n, dtype=torch.float64)
    for h in range(k):
        for i in range(m):
            for j in range(n):
                want[p[h, i, j], j] += s[h, i, j] * grad_wp[i, h * n + j]
    torch.testing.assert_close(grad_w, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_signed_w_p_holds_each_entry_of_w_k_times_with_a_sign(permutation):
    m, n, k = 13, 5, 7
    layer = RPPLinear(m, n, k, permutation=permutation, seed=3, layer=2, signs=True)
    unsigned = RPPLinear(m, n, k, permutation=permutation, seed=3, layer=2)
    with torch.no_grad():
        for each in (layer, unsigned):
            each.weight.copy_(torch.arange(1, m * n + 1, dtype=torch.float32).view(m, n))  # distinct, none 0
            each.bias.zero_()
    wp, plain = layer(torch.eye(m)), unsigned(torch.eye(m))  # row i of the output is row i of W_p
    assert torch.equal(wp.abs(), plain)  # the same P: only the signs differ
    s = layer.sign_tensor().permute(1, 0, 2).reshape(m, k * n)
    assert torch.equal(wp, plain * s)
    negative = (s < 0).float().mean().item()
    assert 0.3 < negative < 0.7  # both signs, about half each
    if permutation != "identity":  # each entry of W keeps |value| k times, as unsigned
        assert torch.equal(torch.bincount(wp.abs().flatten().long(), minlength=m * n + 1)[1:], torch.full((m * n,), k))


def test_signs_depend_on_seed_and_layer_and_differ_between_columns_and_copies():
    s = RPPLinear(40, 4, 3, seed=0, layer=0, signs=True).sign_tensor()
    assert torch.equal(s, RPPLinear(40, 4, 3, seed=0, layer=0, signs=True, permutation="generated").sign_tensor())
    assert not torch.equal(s, RPPLinear(40, 4, 3, seed=0, layer=1, signs=True).sign_tensor())
    assert not torch.equal(s, RPPLinear(40, 4, 3, seed=1, layer=0, signs=True).sign_tensor())
    assert torch.equal(RPPLinear(40, 4, 3, seed=0, layer=1, signs=True, permutation="shared").sign_tensor(), s)
    assert len({tuple(s[h, :, j].tolist()) for h in range(3) for j in range(4)}) == 12
    assert torch.equal(RPPLinear(40, 4, 3).sign_tensor(), torch.ones(3, 40, 4))  # unsigned: all +1


def test_signs_add_no_parameters_nor_state_and_generated_keeps_nothing_more():
    for permutation in PERMUTATIONS:
        signed = RPPLinear(300, 4, 3, permutation=permutation, signs=True)
        unsigned = RPPLinear(300, 4, 3, permutation=permutation)
        assert [p.shape for p in signed.parameters()] == [p.shape for p in unsigned.parameters()]
        assert set(signed.state_dict()) == set(unsigned.state_dict()) == {"weight", "bias"}
        assert index_storage(signed) == index_storage(unsigned)
        extra = {name: b for name, b in signed.named_buffers()}.keys() - {name for name, _ in unsigned.named_buffers()}
        if permutation == "generated":  # the sign keys are made from the round keys where used
            assert extra == set()
        else:  # one int32 key per column: 32 / m bits per entry of W_p
            assert extra == {"sign_keys"} and signed.sign_keys.shape == (12,) and signed.sign_keys.dtype == torch.int32
    loaded = RPPLinear(300, 4, 3, signs=True, permutation="generated")
    stored = RPPLinear(300, 4, 3, signs=True)
    loaded.load_state_dict(stored.state_dict())
    x = torch.randn(2, 300)
    torch.testing.assert_close(loaded(x), stored(x))  # the signs come back from seed and layer, like P


def test_signed_layer_weight_gradient_is_deterministic_and_repr_names_signs():
    layer = RPPLinear(64, 8, 20, permutation="generated", signs=True)
    x = torch.randn(32, 64)
    grads = []
    for _ in range(2):
        layer.zero_grad()
        layer(x).square().sum().backward()
        grads.append(layer.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert "signs=True" in repr(layer) and "signs" not in repr(RPPLinear(64, 8, 20))


def test_init_default_is_the_former_draw_bit_for_bit():
    # before the init option: U(+-1/sqrt(m)) for the weight, then the bias, from the global generator
    m, n, k = 300, 7, 5
    torch.manual_seed(3)
    weight = torch.empty(m, n).uniform_(-1 / math.sqrt(m), 1 / math.sqrt(m))
    bias = torch.empty(k * n).uniform_(-1 / math.sqrt(m), 1 / math.sqrt(m))
    for init in ("hidden_fan_in", "wide_fan_in"):  # the wide layer's fan-in is m too: the same draw
        torch.manual_seed(3)
        layer = RPPLinear(m, n, k, init=init)
        assert torch.equal(layer.weight.detach(), weight) and torch.equal(layer.bias.detach(), bias), init
    torch.manual_seed(3)
    assert torch.equal(RPPLinear(m, n, k).weight.detach(), weight)  # and the default is hidden_fan_in


def torch_bounds(m: int, out: int) -> tuple[float, float, float]:
    """nn.Linear(m, out)'s weight and bias bounds and Glorot's, by torch's own fan rule and gains."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(torch.empty(out, m, device="meta"))
    kaiming = nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3 / fan_in)
    return kaiming, 1 / math.sqrt(fan_in), math.sqrt(6 / (fan_in + fan_out))


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("m, n, k", [(784, 10, 100), (1000, 10, 100), (30, 20, 3)])
def test_each_init_draws_uniformly_within_its_bound(init, m, n, k):
    kaiming_hidden, bias_bound, glorot_hidden = torch_bounds(m, n)
    kaiming_wide, wide_bias_bound, glorot_wide = torch_bounds(m, k * n)
    assert kaiming_hidden == pytest.approx(kaiming_wide) == pytest.approx(bias_bound) == wide_bias_bound
    bound = {"hidden_fan_in": kaiming_hidden, "wide_fan_in": kaiming_wide, "glorot_hidden": glorot_hidden,
             "glorot_wide": glorot_wide}[init]
    torch.manual_seed(0)
    layer = RPPLinear(m, n, k, init=init, permutation="identity")
    got_bound, got_bias_bound = layer.init_bounds()
    assert got_bound == pytest.approx(bound, rel=1e-12) and got_bias_bound == pytest.approx(bias_bound, rel=1e-12)
    weight, bias = layer.weight.detach().double(), layer.bias.detach().double()
    assert weight.abs().max() <= bound and weight.abs().max() > 0.97 * bound  # fills its interval
    # uniform: mean 0 and variance bound^2 / 3, to 6 standard errors
    count = weight.numel()
    assert abs(weight.mean().item()) < 6 * bound / math.sqrt(3 * count)
    assert weight.var().item() == pytest.approx(bound**2 / 3, rel=6 * math.sqrt(0.8 / count))
    assert bias.abs().max() <= bias_bound and bias.abs().max() > 0.9 * bias_bound
    if init != INITS[0]:
        assert f"init='{init}'" in repr(layer)


def test_the_inits_differ_where_their_bounds_do():
    bounds = {init: RPPLinear(784, 10, 100, init=init, permutation="identity").init_bounds()[0] for init in INITS}
    assert bounds["hidden_fan_in"] == bounds["wide_fan_in"] == 1 / math.sqrt(784)
    assert bounds["glorot_hidden"] == pytest.approx(math.sqrt(6 / 794))  # 2.4 times the default
    assert bounds["glorot_wide"] == pytest.approx(math.sqrt(6 / 1784))  # 1.6 times the default


@pytest.mark.parametrize(
    "kwargs, name",
    [({"signs": 1}, "signs"), ({"signs": "true"}, "signs"), ({"signs": None}, "signs"), ({"init": "xavier"}, "init"),
     ({"init": None}, "init")],
)
def test_bad_signs_and_init_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}=.* is invalid; allowed: "):
        RPPLinear(4, 3, 2, **kwargs)
    with pytest.raises(ValueError, match="allowed: 'hidden_fan_in', 'wide_fan_in', 'glorot_hidden', 'glorot_wide'"):
        RPPLinear(4, 3, 2, init="glorot")
