"""The layer against a float64 loop reference on every CPU backend: eager PyTorch (what runs with the kernels
off), the materialising C++ kernels and the fused ones, and whichever is the default; unsigned and signed, eager
and through torch.compile.

The reference takes P from rppnets.layers.permutation directly (numpy keys, eager Feistel rounds), not from a backend,
so a backend that builds the wrong P, or gathers W with a transposed index, disagrees with it; and signed RPP's signs
from plain Python integers (helpers.signs_by_loops), so a backend with a wrong sign disagrees too.
"""

import os

import pytest
import torch
from helpers import permuted_weight_by_loops, signs_by_loops

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


def reference_signs(layer: RPPLinear) -> torch.Tensor | None:
    """Signed RPP's s (k, m, n) by loops (layer 0's for shared, like its P); None unsigned."""
    if not layer.signs:
        return None
    layer_id = 0 if layer.permutation == "shared" else layer.layer
    return signs_by_loops(layer.seed, layer_id, layer.in_features, layer.width, layer.k)


def reference(layer: RPPLinear, x: torch.Tensor, grad_y: torch.Tensor):
    """y = x @ W_p + b with W_p[i, h*n + j] = s[h, i, j] W[P[h, i, j], j] (s = 1 unsigned) built entry by entry, and
    its gradients by hand."""
    p, (m, n, k) = reference_p(layer), (layer.in_features, layer.width, layer.k)
    s = reference_signs(layer)
    wp = permuted_weight_by_loops(p, layer.weight.detach(), torch.float64, s)
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and layer.bias_mode == "reuse":
        bias = bias.repeat(k)
    y = x @ wp + (0 if bias is None else bias)
    grad_wp = x.t() @ grad_y  # (m, k*n)
    grad_w = torch.zeros(m, n, dtype=torch.float64)
    for h in range(k):
        for i in range(m):
            for j in range(n):
                grad_w[p[h, i, j], j] += grad_wp[i, h * n + j] * (1 if s is None else s[h, i, j])
    grad_b = None if layer.bias is None else grad_y.sum(0)
    if grad_b is not None and layer.bias_mode == "reuse":
        grad_b = grad_b.view(k, n).sum(0)
    return y, grad_y @ wp.t(), grad_w, grad_b


def check_against_reference(layer: RPPLinear, batch: int = 3, model=None) -> None:
    """The layer's y and gradients (of x, W, b) against the loop reference; run through `model` where given (the
    layer compiled)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, layer.in_features, dtype=torch.float64, generator=generator, requires_grad=True)
    y = (model or layer)(x)
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


SIGNED_SHAPES = [(1, 1, 1), (5, 3, 2), (33, 4, 3), (300, 2, 2), (7, 10, 8)]  # m = 300: an int16 index, a walked
# 512-value domain; k * n = 80: two blocks of the fused step, the second with its own signs


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda backend: backend or "default")
@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("bias", BIAS_MODES)
def test_signed_layer_matches_the_loop_reference_on_every_backend(backend, permutation, bias):
    for m, n, k in SIGNED_SHAPES:
        torch.manual_seed(m)
        layer = RPPLinear(m, n, k, bias=bias, permutation=permutation, seed=5, layer=2, signs=True).double()
        layer.backend = backend
        check_against_reference(layer)


def test_the_signed_reference_is_not_the_unsigned_one():
    # the signed tests compare something else than the unsigned ones: the signs change W_p and dW
    torch.manual_seed(0)
    signed = RPPLinear(33, 4, 3, seed=5, layer=2, signs=True).double()
    unsigned = RPPLinear(33, 4, 3, seed=5, layer=2).double()
    unsigned.load_state_dict(signed.state_dict())
    s = reference_signs(signed)
    assert (s == -1).any() and (s == 1).any()
    x, grad_y = torch.randn(3, 33, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    for a, b in zip(reference(signed, x, grad_y)[:3], reference(unsigned, x, grad_y)[:3]):
        assert not torch.allclose(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("signs", [False, True], ids=["unsigned", "signed"])
def test_compiled_layers_match_the_loop_reference_on_every_backend(signs):
    # one torch.compile(fullgraph=True) of a module holding a layer per (permutation mode, backend), all fed the same
    # x; each layer's y, dW and db against its reference, and dx against the sum of theirs
    backends = [name for name in ("eager", "cpu", "cpu-fused") if name == "eager" or not KERNELS_OFF]
    m, n, k = 33, 4, 3
    torch.manual_seed(0)
    layers = torch.nn.ModuleList()
    for permutation in PERMUTATIONS:
        for backend in backends:
            layer = RPPLinear(m, n, k, permutation=permutation, seed=5, layer=2, signs=signs).double()
            layer.backend = backend
            layers.append(layer)

    class Each(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            return torch.cat([layer(x) for layer in self.layers], dim=1)

    compiled = torch.compile(Each(), fullgraph=True)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, m, dtype=torch.float64, generator=generator, requires_grad=True)
    y = compiled(x)
    grad_y = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    y.backward(grad_y)
    grad_x = torch.zeros_like(x)
    for index, layer in enumerate(layers):
        columns = slice(index * k * n, (index + 1) * k * n)
        want_y, want_dx, want_dw, want_db = reference(layer, x.detach(), grad_y[:, columns])
        name = f"{layer.permutation}/{layer.backend}"
        torch.testing.assert_close(y[:, columns], want_y, atol=1e-10, rtol=0, msg=lambda text: f"{name} y: {text}")
        torch.testing.assert_close(layer.weight.grad, want_dw, atol=1e-10, rtol=0, msg=lambda t: f"{name} dW: {t}")
        torch.testing.assert_close(layer.bias.grad, want_db, atol=1e-10, rtol=0, msg=lambda t: f"{name} db: {t}")
        grad_x += want_dx
    torch.testing.assert_close(x.grad, grad_x, atol=1e-10, rtol=0)
