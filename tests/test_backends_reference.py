"""The layer against a float64 loop reference on every CPU backend: eager PyTorch (what runs with the kernels
off), the materialising C++ kernels and the fused ones, and whichever is the default.

The reference takes P from rppnets.layers.permutation directly (numpy keys, eager Feistel rounds), not from a backend,
so a backend that builds the wrong P, or gathers W with a transposed index, disagrees with it.
"""

import os

import pytest
import torch
from helpers import permuted_weight_by_loops

from rppnets.layers import backends, cpu_kernels
from rppnets.layers.backends import EagerBackend, default_backend
from rppnets.layers.permutation import build_index, random_index
from rppnets.layers.rpp_linear import BIAS_MODES, PERMUTATIONS, RPPLinear

SHAPES = [(1, 1, 1), (5, 3, 2), (33, 4, 3)]  # (m, n, k)
KERNELS_OFF = os.environ.get("RPPNETS_CPU_KERNELS") == "0"
kernels = pytest.mark.skipif(KERNELS_OFF, reason="the C++ kernels are switched off (RPPNETS_CPU_KERNELS=0)")
BACKENDS = ["eager", pytest.param("cpu", marks=kernels), pytest.param("cpu-fused", marks=kernels), None]


def reference_p(layer: RPPLinear) -> torch.Tensor:
    """P (k, m, n) as int64, from rppnets.layers.permutation alone."""
    m, n, k = layer.in_features, layer.width, layer.k
    if layer.permutation == "identity":
        rows = torch.arange(m)[:, None].expand(m, k * n)
    elif layer.permutation == "random":
        rows = random_index(m, n, k, layer.seed, layer.layer)
    else:  # the three Feistel modes; shared is always layer 0's P
        rows = build_index(m, n, k, layer.seed, 0 if layer.permutation == "shared" else layer.layer)
    return rows.long().view(m, k, n).permute(1, 0, 2)


def reference(layer: RPPLinear, x: torch.Tensor, grad_y: torch.Tensor):
    """y = x @ W_p + b with W_p[i, h*n + j] = W[P[h, i, j], j] built entry by entry, and its gradients by hand."""
    p, (m, n, k) = reference_p(layer), (layer.in_features, layer.width, layer.k)
    wp = permuted_weight_by_loops(p, layer.weight.detach(), torch.float64)
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and layer.bias_mode == "reuse":
        bias = bias.repeat(k)
    y = x @ wp + (0 if bias is None else bias)
    grad_wp = x.t() @ grad_y  # (m, k*n)
    grad_w = torch.zeros(m, n, dtype=torch.float64)
    for h in range(k):
        for i in range(m):
            for j in range(n):
                grad_w[p[h, i, j], j] += grad_wp[i, h * n + j]
    grad_b = None if layer.bias is None else grad_y.sum(0)
    if grad_b is not None and layer.bias_mode == "reuse":
        grad_b = grad_b.view(k, n).sum(0)
    return y, grad_y @ wp.t(), grad_w, grad_b


def check_against_reference(layer: RPPLinear, batch: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, layer.in_features, dtype=torch.float64, generator=generator, requires_grad=True)
    y = layer(x)
    grad_y = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    got = (y, *torch.autograd.grad(y, params, grad_y))
    want = reference(layer, x.detach(), grad_y)
    for name, a, b in zip(("y", "dx", "dW", "db"), got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda text: f"{name}: {text}")


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend or "default")
@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("bias", BIAS_MODES)
def test_layer_matches_the_loop_reference_on_every_backend(backend, permutation, bias):
    for m, n, k in SHAPES:
        torch.manual_seed(m)
        layer = RPPLinear(m, n, k, bias=bias, permutation=permutation, seed=5, layer=2).double()
        layer.backend = backend
        check_against_reference(layer)


@kernels
def test_the_cpu_default_is_the_fused_kernel():
    assert default_backend("cpu") == "cpu-fused"


def test_with_the_kernels_switched_off_the_default_is_eager_and_matches_the_reference(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "kernel", lambda: None)  # what RPPNETS_CPU_KERNELS=0 (or no compiler) gives
    monkeypatch.setattr(backends, "_BACKENDS", {"eager": EagerBackend()})
    assert default_backend("cpu") == "eager"
    with pytest.raises(ValueError, match="backend='cpu-fused' is invalid on cpu; allowed: 'eager'"):
        backends.get_backend("cpu-fused", torch.device("cpu"))
    for permutation in PERMUTATIONS:
        layer = RPPLinear(33, 4, 3, permutation=permutation, seed=5, layer=2).double()
        check_against_reference(layer)


def test_rppnets_cpu_kernels_0_switches_the_kernels_off(monkeypatch):
    monkeypatch.setenv("RPPNETS_CPU_KERNELS", "0")
    assert cpu_kernels.kernel.__wrapped__() is None  # the uncached function: the process's build stays cached
