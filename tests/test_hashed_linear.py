"""Tests of HashedLinear: against a float64 reference built by loops from a pure-Python hash, structure, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rppnets.layers.hashed_linear import MAX_BUCKETS, HashedLinear

MASK = 2**64 - 1


def mix(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_hash(seed: int, layer: int, entry: int, buckets: int) -> tuple[int, int]:
    """(bucket, sign) of entry i*out+j: splitmix64 output entry+1 from the layer's salt, top 32 bits scaled to 2K."""
    salt = mix(mix(seed) ^ layer)
    u = mix(salt + (entry + 1) * 0x9E3779B97F4A7C15) >> 32
    signed = u * 2 * buckets >> 32
    return signed % buckets, 1 if signed < buckets else -1


def reference_virtual_weight(layer: HashedLinear, weight: torch.Tensor) -> torch.Tensor:
    """V[i, j] = s(i, j) * w[h(i, j)] entry by entry with Python loops (differentiable in weight)."""
    m, n = layer.in_features, layer.out_features
    entries = []
    for i in range(m):
        for j in range(n):
            bucket, sign = reference_hash(layer.seed, layer.layer, i * n + j, layer.buckets)
            entries.append(sign * weight[bucket])
    return torch.stack(entries).view(m, n)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 8),
    out=st.integers(1, 9),
    buckets=st.integers(1, 12),
    batch=st.integers(1, 4),
    bias=st.sampled_from(("full", "none")),
    seed=st.integers(0, 2**64 - 1),
    layer_id=st.integers(0, 50),
)
def test_matches_float64_reference(m, out, buckets, batch, bias, seed, layer_id):
    torch.manual_seed(0)
    layer = HashedLinear(m, out, buckets, bias=bias, seed=seed, layer=layer_id).double()
    x = torch.randn(batch, m, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (batch, out)
    w = layer.weight.detach().clone().requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = x_ref @ reference_virtual_weight(layer, w) + (0 if b is None else b)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)

    grad_y = torch.randn_like(y)
    params = [x, layer.weight] + ([layer.bias] if b is not None else [])
    ref_params = [x_ref, w] + ([b] if b is not None else [])
    grads = torch.autograd.grad(y, params, grad_y)
    ref_grads = torch.autograd.grad(y_ref, ref_params, grad_y)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_virtual_weight_uses_every_bucket_with_both_signs():
    layer = HashedLinear(60, 50, buckets=37, seed=2, layer=1)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1, 38, dtype=torch.float32))  # bucket b holds b + 1
    v = layer.virtual_weight().detach()
    bucket, sign = v.abs().long() - 1, v.sign().long()
    counts = torch.bincount(bucket.flatten(), minlength=37)
    assert counts.numel() == 37 and counts.min() > 0.5 * 3000 / 37  # 3000 entries spread over all 37 buckets
    assert abs((sign == 1).float().mean().item() - 0.5) < 0.05
    # each bucket's entries carry both signs: a sign ignored somewhere would make them all equal
    assert all(set(sign[bucket == b].tolist()) == {-1, 1} for b in range(37))


def test_weight_gradient_sums_signed_entry_gradients_per_bucket():
    torch.manual_seed(0)
    layer = HashedLinear(30, 40, buckets=11, bias="none", seed=9).double()
    x = torch.randn(16, 30, dtype=torch.float64)
    grad_y = torch.randn(16, 40, dtype=torch.float64)
    layer(x).backward(grad_y)
    grad_v = x.t() @ grad_y
    want = torch.zeros(11, dtype=torch.float64)
    for i in range(30):
        for j in range(40):
            bucket, sign = reference_hash(9, 0, i * 40 + j, 11)
            want[bucket] += sign * grad_v[i, j]
    torch.testing.assert_close(layer.weight.grad, want, atol=1e-10, rtol=0)


def test_parameter_count_attributes_and_state_dict():
    layer = HashedLinear(5, 24, buckets=30)
    assert sum(p.numel() for p in layer.parameters()) == 30 + 24
    assert sum(p.numel() for p in HashedLinear(5, 24, 30, bias="none").parameters()) == 30
    assert (layer.in_features, layer.out_features, layer.buckets, layer.bias_mode, layer.seed, layer.layer) == (
        5, 24, 30, "full", 0, 0)
    assert set(layer.state_dict()) == {"weight", "bias"} and not list(layer.buffers())  # no hash table kept
    assert all(s in repr(layer) for s in ("in_features=5", "out_features=24", "buckets=30", "bias='full'"))


def test_same_seed_and_layer_same_hash_others_differ():
    def v(seed, layer):
        hashed = HashedLinear(20, 30, 50, seed=seed, layer=layer)
        with torch.no_grad():
            hashed.weight.copy_(torch.arange(50.0) + 1)
        return hashed.virtual_weight()

    assert torch.equal(v(4, 1), v(4, 1))
    assert not torch.equal(v(4, 1), v(4, 2)) and not torch.equal(v(4, 1), v(5, 1))


def test_initialisation_is_bounded_like_nn_linear():
    torch.manual_seed(0)
    layer = HashedLinear(400, 90, buckets=5000)
    bound = 400**-0.5
    for tensor in (layer.weight, layer.bias):
        assert 0.95 * bound < tensor.abs().max() <= bound


def test_only_inputs_are_saved_for_backward_and_batch_dimensions_pass_through():
    layer = HashedLinear(20, 300, buckets=40)
    x = torch.randn(8, 20)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert [t.shape for t in saved] == [x.shape]  # no V, no hash: recomputed in backward
    y.sum().backward()
    assert x.grad is None and layer.weight.grad is not None
    x3 = torch.randn(2, 3, 20)
    torch.testing.assert_close(layer(x3)[1, 2], layer(x3[1, 2]))


@pytest.mark.parametrize("kwargs, name", [
    ({"in_features": 0}, "in_features"),
    ({"out_features": 0}, "out_features"),
    ({"buckets": 0}, "buckets"),
    ({"buckets": MAX_BUCKETS + 1}, "buckets"),
    ({"bias": "reuse"}, "bias"),
    ({"seed": -1}, "seed"),
    ({"layer": 1.5}, "layer"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {"in_features": 4, "out_features": 6, "buckets": 5} | kwargs
    with pytest.raises(ValueError, match=f"^{name}="):
        HashedLinear(**args)


def test_wrong_input_width():
    with pytest.raises(ValueError, match="7 features, expected 4"):
        HashedLinear(4, 6, 5)(torch.randn(3, 7))


def test_autocast_runs_the_matmuls_in_its_dtype_and_keeps_float32_gradients():
    torch.manual_seed(0)
    layer = HashedLinear(32, 48, buckets=100)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), atol=0.05, rtol=0.05)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32


COMPILED_AT_ONE_THREAD = """
import torch
from rppnets.layers.hashed_linear import HashedLinear
torch.set_num_threads(1)
torch.manual_seed(0)
layer = HashedLinear(784, 1000, buckets=7840)
x = torch.randn(128, 784)
outputs = []
for model in (layer, torch.compile(layer, fullgraph=True)):
    y = model(x)
    y.square().mean().backward()
    outputs.append((y.detach(), layer.weight.grad.clone()))
    layer.weight.grad = None
torch.testing.assert_close(outputs[1], outputs[0])
print("compiled equals eager")
"""


@pytest.mark.slow
@pytest.mark.long  # half a minute of compiling; make test compiles the pipeline's network (test_training)
def test_compiled_layer_equals_eager_at_one_thread():
    # Inductor compiled the int64 hash wrongly at one thread and the gather after it segfaulted: a fresh process
    src = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-c", COMPILED_AT_ONE_THREAD], env={**os.environ, "PYTHONPATH": src},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "compiled equals eager" in result.stdout, result.stderr[-3000:]


def test_the_hash_op_passes_opcheck():
    torch.library.opcheck(torch.ops.rppnets.signed_buckets.default, (-(2**63) + 5, 37, 11, torch.device("cpu")))
