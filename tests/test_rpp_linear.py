"""Tests of RPPLinear: against an explicit float64 reference, structure of P, modes, memory, bad input."""

import copy

import pytest
import torch
from helpers import forward_backward, permuted_weight_by_loops
from hypothesis import given, settings
from hypothesis import strategies as st

from rppnets.layers import rpp_ops
from rppnets.layers.backends import EagerBackend, Permutation, default_backend
from rppnets.layers.permutation import build_index
from rppnets.layers.rpp_linear import BIAS_MODES, FEISTEL_PERMUTATIONS, PERMUTATIONS, RPPLinear, index_storage

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


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_bfloat16_parameters_and_autocast_are_close_to_float32(permutation):
    torch.manual_seed(0)
    layer = RPPLinear(64, 8, 4, permutation=permutation)
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

    half = RPPLinear(64, 8, 4, permutation=permutation).to(torch.bfloat16)
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
