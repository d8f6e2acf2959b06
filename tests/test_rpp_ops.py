"""Tests of RPP's registered ops: torch.library.opcheck on each, their autograd, the backend choice, torch.compile;
unsigned and signed."""

import pytest
import torch

from rppnets.layers import cpu_kernels, rpp_ops
from rppnets.layers.backends import default_backend, get_backend
from rppnets.layers.permutation import build_index, round_keys, sign_keys
from rppnets.layers.rpp_linear import BIAS_MODES, PERMUTATIONS, RPPLinear

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
M, N, K = 37, 3, 4  # m = 37: stored as uint8, a Feistel domain of 64 with cycle walking


def p_args(kind: str, device="cpu") -> tuple:
    """(p, k, kind) of one small layer's P."""
    p = {"index": build_index(M, N, K, 5, 1), "keys": round_keys(5, 1, K, N), "identity": None}[kind]
    return (None if p is None else p.to(device)), K, kind


def backends_on(device: str) -> list[str | None]:
    """None (the device's default) and every backend that runs there."""
    names = {"cpu": ["cpu", "cpu-fused"], "cuda": ["triton", "triton-fused"]}[device]
    return [None, "eager"] + [name for name in names if default_backend(device) != "eager"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("kind", ["index", "keys", "identity"])
def test_opcheck_every_op(device, kind):
    p, k, kind = p_args(kind, device)
    x = torch.randn(5, M, device=device, requires_grad=True)
    weight = torch.randn(M, N, device=device, requires_grad=True)
    grad_y = torch.randn(5, K * N, device=device)
    grad_wp = torch.randn(M, K * N, device=device, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(rpp_ops.permuted_matmul, (x, weight, p, k, kind, None))
    torch.library.opcheck(rpp_ops.permuted_matmul, (x.detach(), weight, p, k, kind, None))  # dW only
    for backend in backends_on(device):  # every backend's outputs have the shapes, dtypes and strides of the fake's
        checks = {} if backend is None else {"test_utils": "test_faketensor"}
        for given in ((x.detach(), weight.detach()), (None, weight.detach()), (x.detach(), None)):
            args = (grad_y, *given, p, M, N, k, kind, backend)
            torch.library.opcheck(rpp_ops.permuted_matmul_backward, args, **checks)
    torch.library.opcheck(rpp_ops.permuted_weight, (grad_wp.detach()[:, :N].requires_grad_(), p, k, kind))
    torch.library.opcheck(rpp_ops.fold_weight_grad, (grad_wp, p, k, kind))
    if kind == "keys":
        for inverse in (False, True):
            torch.library.opcheck(rpp_ops.feistel_rows, (p, M, inverse))


@pytest.mark.parametrize("kind", ["index", "keys", "identity"])
def test_gather_and_fold_are_each_others_adjoint_and_gradcheck(kind):
    p, k, kind = p_args(kind)
    weight = torch.randn(M, N, dtype=torch.float64, requires_grad=True)
    grad_wp = torch.randn(M, K * N, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda w: rpp_ops.permuted_weight(w, p, k, kind), (weight,), fast_mode=True)
    torch.autograd.gradcheck(lambda g: rpp_ops.fold_weight_grad(g, p, k, kind), (grad_wp,), fast_mode=True)
    # <W_p(W), G> = <W, fold(G)>
    wp = rpp_ops.permuted_weight(weight, p, k, kind)
    inner = (wp * grad_wp).sum()
    torch.testing.assert_close(inner, (weight * rpp_ops.fold_weight_grad(grad_wp, p, k, kind)).sum())


@pytest.mark.parametrize("kind", ["index", "keys", "identity"])
def test_permuted_matmul_gradcheck_on_every_cpu_backend(kind):
    p, k, kind = p_args(kind)
    x = torch.randn(3, M, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(M, N, dtype=torch.float64, requires_grad=True)
    for backend in backends_on("cpu"):
        step = lambda a, w: rpp_ops.permuted_matmul(a, w, p, k, kind, backend)  # noqa: E731
        torch.autograd.gradcheck(step, (x, weight), fast_mode=True)


def test_default_backends_and_bad_names():
    expected = "eager" if cpu_kernels.kernel() is None else "cpu-fused"  # the fused C++ kernels, where they build
    assert default_backend("cpu") == default_backend(torch.device("cpu")) == expected
    assert get_backend("eager", torch.device("cpu")).name == "eager"
    with pytest.raises(ValueError, match=r"^backend='triton' is invalid on cpu; allowed: 'eager'"):
        get_backend("triton", torch.device("cpu"))
    layer = RPPLinear(M, N, K)
    layer.backend = "no-such-backend"
    with pytest.raises(ValueError, match="no-such-backend"):
        layer(torch.randn(2, M))
    with pytest.raises(ValueError, match="kind='rows'"):
        rpp_ops.permuted_weight(torch.randn(M, N), build_index(M, N, K, 0, 0), K, "rows")


def every_mode_network(device="cpu", signs=False) -> torch.nn.Sequential:
    """A network with an RPP layer for every permutation and bias mode, 12 wide: one compilation covers them all."""
    torch.manual_seed(0)
    layers = []
    for permutation in PERMUTATIONS:
        for bias in BIAS_MODES:
            layer = RPPLinear(12, 3, 4, bias=bias, permutation=permutation, layer=len(layers), signs=signs)
            layers += [layer, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(12, 2)).to(device)


def training_step(network, model, x):
    """y and every parameter's gradient after a backward of y.square().mean(), as copies."""
    network.zero_grad(set_to_none=True)
    y = model(x)
    y.square().mean().backward()
    return [y.detach().clone()] + [p.grad.clone() for p in network.parameters()]


@pytest.mark.slow
def test_torch_compile_fullgraph_of_an_rpp_network_equals_eager_in_every_mode():
    network = every_mode_network()
    x = torch.randn(6, 12)  # no gradient: the first layer computes dW only
    eager = training_step(network, network, x)
    compiled = training_step(network, torch.compile(network, fullgraph=True), x)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@cuda
@pytest.mark.slow
@pytest.mark.parametrize("backend", [None, "triton-fused"], ids=["default", "triton-fused"])
def test_cuda_graphs_of_an_rpp_network_equal_eager_in_every_mode(backend):
    # torch.compile's reduce-overhead mode records the forward and backward in CUDA graphs, then replays them
    network = every_mode_network("cuda")
    for layer in network:
        if isinstance(layer, RPPLinear):
            layer.backend = backend
    x = torch.randn(6, 12, device="cuda")
    eager = training_step(network, network, x)
    compiled = torch.compile(network, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replays
        torch.compiler.cudagraph_mark_step_begin()
        for got, want in zip(training_step(network, compiled, x), eager):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def sign_args(device="cpu") -> torch.Tensor:
    """The sign keys of the small layer's columns (signed RPP)."""
    return sign_keys(round_keys(5, 1, K, N)).to(device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("kind", ["index", "keys", "identity"])
def test_opcheck_every_op_with_signs(device, kind):
    p, k, kind = p_args(kind, device)
    signs = sign_args(device)
    x = torch.randn(5, M, device=device, requires_grad=True)
    weight = torch.randn(M, N, device=device, requires_grad=True)
    grad_y = torch.randn(5, K * N, device=device)
    grad_wp = torch.randn(M, K * N, device=device, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(rpp_ops.permuted_matmul, (x, weight, p, k, kind, None, signs))
    for backend in backends_on(device):
        checks = {} if backend is None else {"test_utils": "test_faketensor"}
        for given in ((x.detach(), weight.detach()), (None, weight.detach()), (x.detach(), None)):
            args = (grad_y, *given, p, M, N, k, kind, backend, signs)
            torch.library.opcheck(rpp_ops.permuted_matmul_backward, args, **checks)
    torch.library.opcheck(rpp_ops.permuted_weight, (grad_wp.detach()[:, :N].requires_grad_(), p, k, kind, signs))
    torch.library.opcheck(rpp_ops.fold_weight_grad, (grad_wp, p, k, kind, signs))


@pytest.mark.parametrize("kind", ["index", "keys", "identity"])
def test_signed_gather_and_fold_are_each_others_adjoint_on_every_cpu_backend(kind):
    p, k, kind = p_args(kind)
    signs = sign_args()
    weight = torch.randn(M, N, dtype=torch.float64, requires_grad=True)
    grad_wp = torch.randn(M, K * N, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda w: rpp_ops.permuted_weight(w, p, k, kind, signs), (weight,), fast_mode=True)
    torch.autograd.gradcheck(lambda g: rpp_ops.fold_weight_grad(g, p, k, kind, signs), (grad_wp,), fast_mode=True)
    wp = rpp_ops.permuted_weight(weight, p, k, kind, signs)
    assert not torch.equal(wp, rpp_ops.permuted_weight(weight, p, k, kind))  # the signs are there
    folded = rpp_ops.fold_weight_grad(grad_wp, p, k, kind, signs)
    torch.testing.assert_close((wp * grad_wp).sum(), (weight * folded).sum())  # <W_p(W), G> = <W, fold(G)>
    x = torch.randn(3, M, dtype=torch.float64, requires_grad=True)
    for backend in backends_on("cpu"):
        step = lambda a, w: rpp_ops.permuted_matmul(a, w, p, k, kind, backend, signs)  # noqa: E731
        torch.autograd.gradcheck(step, (x, weight), fast_mode=True)


def test_sign_keys_of_the_wrong_shape_or_dtype_are_refused():
    p, k, kind = p_args("index")
    weight = torch.randn(M, N)
    with pytest.raises(ValueError, match=r"signs: expected sign keys of shape \(12,\) and dtype int32"):
        rpp_ops.permuted_weight(weight, p, k, kind, sign_args().long())
    with pytest.raises(ValueError, match=r"signs: expected sign keys of shape \(12,\)"):
        rpp_ops.permuted_weight(weight, p, k, kind, sign_args()[:5])


@pytest.mark.slow
def test_torch_compile_fullgraph_of_a_signed_rpp_network_equals_eager_in_every_mode():
    network = every_mode_network(signs=True)
    x = torch.randn(6, 12)
    eager = training_step(network, network, x)
    compiled = training_step(network, torch.compile(network, fullgraph=True), x)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
